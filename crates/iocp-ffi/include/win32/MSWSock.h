/* MSWSock.h: the spelling some Windows programs use. */
#include "mswsock.h"

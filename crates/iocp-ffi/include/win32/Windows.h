/* Windows.h: the spelling some Windows programs use. */
#include "windows.h"

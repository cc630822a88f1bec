/* Ws2tcpip.h: the spelling some Windows programs use. */
#include "ws2tcpip.h"

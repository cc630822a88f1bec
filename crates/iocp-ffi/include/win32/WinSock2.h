/* WinSock2.h: the spelling some Windows programs use. */
#include "winsock2.h"

/* mswsock.h - AcceptEx, ConnectEx, TransmitFile... are declared by iocp.h (via winsock2.h). */
#ifndef IOCP_WIN32_MSWSOCK_H
#define IOCP_WIN32_MSWSOCK_H
#include "winsock2.h"
#endif

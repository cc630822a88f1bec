/* mstcpip.h - TCP/IP extensions for Windows programs on libiocp (see windows.h):
 * SIO_KEEPALIVE_VALS with struct tcp_keepalive (WSAIoctl sets SO_KEEPALIVE, TCP_KEEPIDLE and
 * TCP_KEEPINTVL, milliseconds rounded up to seconds), SIO_LOOPBACK_FAST_PATH (accepted, no-op),
 * SOCKADDR_INET, SCOPE_ID and IN6ADDR_SETV4MAPPED (from ws2tcpip.h). */
#ifndef IOCP_WIN32_MSTCPIP_H
#define IOCP_WIN32_MSTCPIP_H
#include "ws2tcpip.h"

#define SIO_KEEPALIVE_VALS 0x98000004u
#define SIO_LOOPBACK_FAST_PATH 0x98000010u
#define SIO_RCVALL 0x98000001u

struct tcp_keepalive {
    ULONG onoff;
    ULONG keepalivetime;
    ULONG keepaliveinterval;
};

#endif

/* ws2tcpip.h - getaddrinfo and friends (<netdb.h>), inet_pton/inet_ntop (<arpa/inet.h>). */
#ifndef IOCP_WIN32_WS2TCPIP_H
#define IOCP_WIN32_WS2TCPIP_H
#include "winsock2.h"
#include <arpa/inet.h>
#include <netdb.h>
typedef struct addrinfo ADDRINFO, *LPADDRINFO;
#define SS_PORT(ssp) (((struct sockaddr_in *)(ssp))->sin_port)
#endif

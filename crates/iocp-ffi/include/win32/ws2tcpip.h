/* ws2tcpip.h - getaddrinfo and friends (<netdb.h>), inet_pton/inet_ntop (<arpa/inet.h>). */
#ifndef IOCP_WIN32_WS2TCPIP_H
#define IOCP_WIN32_WS2TCPIP_H
#include "winsock2.h"
#include <arpa/inet.h>
#include <netdb.h>
typedef struct addrinfo ADDRINFO, *LPADDRINFO;
#define SS_PORT(ssp) (((struct sockaddr_in *)(ssp))->sin_port)

typedef IN_ADDR *PIN_ADDR;
typedef struct in6_addr IN6_ADDR, *PIN6_ADDR;
typedef USHORT ADDRESS_FAMILY;

/* SOCKADDR_INET: an IPv4 or IPv6 address, told apart by si_family (ws2ipdef.h). */
typedef union _SOCKADDR_INET {
    SOCKADDR_IN Ipv4;
    SOCKADDR_IN6 Ipv6;
    ADDRESS_FAMILY si_family;
} SOCKADDR_INET, *PSOCKADDR_INET;

/* SCOPE_ID: an IPv6 scope (zone and level), stored in sin6_scope_id. */
typedef struct {
    union {
        struct {
            ULONG Zone : 28;
            ULONG Level : 4;
        } s;
        ULONG Value;
    };
} SCOPE_ID, *PSCOPE_ID;
static const SCOPE_ID scopeid_unspecified = {{{0, 0}}};
#define SCOPEID_UNSPECIFIED_INIT {{{0, 0}}}

/* IN6ADDR_SETV4MAPPED: `a6` becomes the IPv4-mapped IPv6 address ::ffff:a4, with `scope` and
 * `port` (network byte order), as ws2ipdef.h defines it. */
static inline void IN6ADDR_SETV4MAPPED(PSOCKADDR_IN6 a6, const IN_ADDR *a4, SCOPE_ID scope,
                                       USHORT port) {
    memset(a6, 0, sizeof *a6);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = port;
    a6->sin6_addr.s6_addr[10] = 0xff;
    a6->sin6_addr.s6_addr[11] = 0xff;
    memcpy(&a6->sin6_addr.s6_addr[12], a4, 4);
    a6->sin6_scope_id = scope.Value;
}
#endif

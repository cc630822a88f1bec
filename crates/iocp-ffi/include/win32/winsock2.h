/*
 * winsock2.h - Winsock for Windows programs on libiocp (see windows.h). Brings windows.h,
 * <netdb.h> (getaddrinfo), the WSAEVENT calls, and wrappers of the BSD socket calls with their
 * Windows signatures (SOCKET, int lengths) that set WSAGetLastError() on failure, as Winsock
 * does (a failed bind then reports WSAEADDRINUSE, not 0). `send` never raises SIGPIPE.
 */
#ifndef IOCP_WIN32_WINSOCK2_H
#define IOCP_WIN32_WINSOCK2_H
#include "windows.h"

#include <fcntl.h>
#include <netdb.h>
#include <sys/ioctl.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef HANDLE WSAEVENT, *LPWSAEVENT;
typedef struct linger LINGER, *PLINGER, *LPLINGER;
typedef struct addrinfo ADDRINFOA, *PADDRINFOA;
typedef struct hostent HOSTENT, *PHOSTENT;
typedef unsigned long u_long;
typedef unsigned short u_short;
#define WSA_INVALID_EVENT ((WSAEVENT)NULL)
#define WSA_WAIT_EVENT_0 WAIT_OBJECT_0
#define WSA_WAIT_FAILED WAIT_FAILED
#define WSA_WAIT_TIMEOUT WAIT_TIMEOUT
#define WSA_INFINITE INFINITE
#define WSA_MAXIMUM_WAIT_EVENTS MAXIMUM_WAIT_OBJECTS
#ifndef SOMAXCONN_HINT
#define SOMAXCONN_HINT(b) (-(b))
#endif
/* Accepted and ignored (no port scalability knob on Linux): setsockopt succeeds. */
#define SO_PORT_SCALABILITY 0x3006
#define SO_EXCLUSIVEADDRUSE ((int)(~SO_REUSEADDR))

WSAEVENT WINAPI WSACreateEvent(void);
BOOL WINAPI WSASetEvent(WSAEVENT hEvent);
BOOL WINAPI WSAResetEvent(WSAEVENT hEvent);
BOOL WINAPI WSACloseEvent(WSAEVENT hEvent);
DWORD WINAPI WSAWaitForMultipleEvents(DWORD cEvents, const WSAEVENT *lphEvents, BOOL fWaitAll,
                                      DWORD dwTimeout, BOOL fAlertable);

/* libiocp extension: WSASetLastError from an errno (what the wrappers below use). */
void iocp_set_wsa_error_from_errno(int e);

static inline int iocp_w_check(int r) {
    if (r < 0) iocp_set_wsa_error_from_errno(errno);
    return r < 0 ? SOCKET_ERROR : r;
}
static inline SOCKET iocp_w_socket(int af, int type, int protocol) {
    int s = socket(af, type, protocol);
    if (s < 0) {
        iocp_set_wsa_error_from_errno(errno);
        return INVALID_SOCKET;
    }
    return (SOCKET)s;
}
static inline int iocp_w_bind(SOCKET s, const struct sockaddr *name, int namelen) {
    return iocp_w_check(bind((int)s, name, (socklen_t)namelen));
}
static inline int iocp_w_connect(SOCKET s, const struct sockaddr *name, int namelen) {
    return iocp_w_check(connect((int)s, name, (socklen_t)namelen));
}
static inline int iocp_w_listen(SOCKET s, int backlog) {
    if (backlog < 0) backlog = -backlog; /* SOMAXCONN_HINT */
    return iocp_w_check(listen((int)s, backlog));
}
static inline SOCKET iocp_w_accept(SOCKET s, struct sockaddr *addr, int *addrlen) {
    socklen_t len = addrlen ? (socklen_t)*addrlen : 0;
    int r = accept((int)s, addr, addrlen ? &len : NULL);
    if (r < 0) {
        iocp_set_wsa_error_from_errno(errno);
        return INVALID_SOCKET;
    }
    if (addrlen) *addrlen = (int)len;
    return (SOCKET)r;
}
static inline int iocp_w_send(SOCKET s, const char *buf, int len, int flags) {
    return iocp_w_check((int)send((int)s, buf, (size_t)len, flags | MSG_NOSIGNAL));
}
static inline int iocp_w_recv(SOCKET s, char *buf, int len, int flags) {
    return iocp_w_check((int)recv((int)s, buf, (size_t)len, flags));
}
static inline int iocp_w_sendto(SOCKET s, const char *buf, int len, int flags,
                                const struct sockaddr *to, int tolen) {
    return iocp_w_check(
        (int)sendto((int)s, buf, (size_t)len, flags | MSG_NOSIGNAL, to, (socklen_t)tolen));
}
static inline int iocp_w_recvfrom(SOCKET s, char *buf, int len, int flags, struct sockaddr *from,
                                  int *fromlen) {
    socklen_t l = fromlen ? (socklen_t)*fromlen : 0;
    int r = iocp_w_check((int)recvfrom((int)s, buf, (size_t)len, flags, from, fromlen ? &l : NULL));
    if (r >= 0 && fromlen) *fromlen = (int)l;
    return r;
}
static inline int iocp_w_getsockname(SOCKET s, struct sockaddr *name, int *namelen) {
    socklen_t l = namelen ? (socklen_t)*namelen : 0;
    int r = iocp_w_check(getsockname((int)s, name, &l));
    if (r == 0 && namelen) *namelen = (int)l;
    return r;
}
static inline int iocp_w_getpeername(SOCKET s, struct sockaddr *name, int *namelen) {
    socklen_t l = namelen ? (socklen_t)*namelen : 0;
    int r = iocp_w_check(getpeername((int)s, name, &l));
    if (r == 0 && namelen) *namelen = (int)l;
    return r;
}
static inline int iocp_w_getsockopt(SOCKET s, int level, int optname, char *optval, int *optlen) {
    socklen_t l = optlen ? (socklen_t)*optlen : 0;
    int r = iocp_w_check(getsockopt((int)s, level, optname, optval, &l));
    if (r == 0 && optlen) *optlen = (int)l;
    return r;
}
static inline int iocp_w_setsockopt(SOCKET s, int level, int optname, const char *optval,
                                    int optlen) {
    /* iocp_setsockopt sets the WSA error, and accepts the Windows-only options. */
    return iocp_setsockopt(s, level, optname, optval, (socklen_t)optlen);
}
static inline int iocp_w_shutdown(SOCKET s, int how) {
    return iocp_w_check(shutdown((int)s, how));
}
static inline int ioctlsocket(SOCKET s, long cmd, u_long *argp) {
    if (cmd == (long)FIONBIO) {
        int fl = fcntl((int)s, F_GETFL);
        if (fl < 0) return iocp_w_check(-1);
        fl = (argp && *argp) ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
        return iocp_w_check(fcntl((int)s, F_SETFL, fl));
    }
    int v = argp ? (int)*argp : 0;
    int r = iocp_w_check(ioctl((int)s, (unsigned long)cmd, &v));
    if (r == 0 && argp) *argp = (u_long)v;
    return r;
}

/* WSAAccept: accept, then the condition function (if any) decides. CF_ACCEPT keeps the
 * connection; CF_REJECT closes it (the client sees a reset) and fails with WSAECONNREFUSED;
 * CF_DEFER is not possible here (Linux has already completed the handshake): the connection is
 * closed and the call fails with WSATRY_AGAIN. The caller and callee ids are the peer and local
 * addresses; there is no connect data and no QOS (NULL). */
#define CF_ACCEPT 0x0000
#define CF_REJECT 0x0001
#define CF_DEFER 0x0002
#ifndef WSATRY_AGAIN
#define WSATRY_AGAIN 11002
#endif
typedef struct _QualityOfService QOS, *LPQOS;
typedef int(CALLBACK *LPCONDITIONPROC)(LPWSABUF lpCallerId, LPWSABUF lpCallerData, LPQOS lpSQOS,
                                       LPQOS lpGQOS, LPWSABUF lpCalleeId, LPWSABUF lpCalleeData,
                                       GROUP *g, DWORD_PTR dwCallbackData);
static inline SOCKET WSAAccept(SOCKET s, struct sockaddr *addr, LPINT addrlen,
                               LPCONDITIONPROC lpfnCondition, DWORD_PTR dwCallbackData) {
    struct sockaddr_storage peer, local;
    int plen = (int)sizeof peer;
    SOCKET c = iocp_w_accept(s, (struct sockaddr *)&peer, &plen);
    if (c == INVALID_SOCKET) return INVALID_SOCKET;
    if (lpfnCondition) {
        socklen_t llen = sizeof local;
        if (getsockname((int)c, (struct sockaddr *)&local, &llen) < 0) llen = 0;
        WSABUF caller = {(ULONG)plen, (char *)&peer};
        WSABUF callee = {(ULONG)llen, (char *)&local};
        GROUP g = 0;
        int verdict =
            lpfnCondition(&caller, NULL, NULL, NULL, &callee, NULL, &g, dwCallbackData);
        if (verdict != CF_ACCEPT) {
            closesocket(c);
            WSASetLastError(verdict == CF_DEFER ? WSATRY_AGAIN : WSAECONNREFUSED);
            return INVALID_SOCKET;
        }
    }
    if (addr && addrlen) {
        int n = plen < *addrlen ? plen : *addrlen;
        memcpy(addr, &peer, (size_t)n);
        *addrlen = plen;
    }
    return c;
}

#ifdef __cplusplus
}
#endif

/* The BSD names with Windows signatures. In C they are macros; in C++ overloads (a macro would
 * also rewrite std::bind and member functions named send/recv). */
#ifdef __cplusplus
/* socket() keeps libc's signature (C++ cannot overload on the return type): its failure is in
 * errno only. */
static inline int bind(SOCKET s, const struct sockaddr *n, int l) { return iocp_w_bind(s, n, l); }
static inline int connect(SOCKET s, const struct sockaddr *n, int l) {
    return iocp_w_connect(s, n, l);
}
static inline int listen(SOCKET s, int b) { return iocp_w_listen(s, b); }
static inline SOCKET accept(SOCKET s, struct sockaddr *a, int *l) { return iocp_w_accept(s, a, l); }
static inline int send(SOCKET s, const char *b, int l, int f) { return iocp_w_send(s, b, l, f); }
static inline int recv(SOCKET s, char *b, int l, int f) { return iocp_w_recv(s, b, l, f); }
static inline int sendto(SOCKET s, const char *b, int l, int f, const struct sockaddr *t, int tl) {
    return iocp_w_sendto(s, b, l, f, t, tl);
}
static inline int recvfrom(SOCKET s, char *b, int l, int f, struct sockaddr *fr, int *fl) {
    return iocp_w_recvfrom(s, b, l, f, fr, fl);
}
static inline int getsockname(SOCKET s, struct sockaddr *n, int *l) {
    return iocp_w_getsockname(s, n, l);
}
static inline int getpeername(SOCKET s, struct sockaddr *n, int *l) {
    return iocp_w_getpeername(s, n, l);
}
static inline int getsockopt(SOCKET s, int lv, int o, char *v, int *l) {
    return iocp_w_getsockopt(s, lv, o, v, l);
}
static inline int shutdown(SOCKET s, int h) { return iocp_w_shutdown(s, h); }
#else
#undef setsockopt
#define socket(af, type, protocol) iocp_w_socket((af), (type), (protocol))
#define bind(s, n, l) iocp_w_bind((s), (n), (l))
#define connect(s, n, l) iocp_w_connect((s), (n), (l))
#define listen(s, b) iocp_w_listen((s), (b))
#define accept(s, a, l) iocp_w_accept((s), (a), (l))
#define send(s, b, l, f) iocp_w_send((s), (b), (l), (f))
#define recv(s, b, l, f) iocp_w_recv((s), (b), (l), (f))
#define sendto(s, b, l, f, t, tl) iocp_w_sendto((s), (b), (l), (f), (t), (tl))
#define recvfrom(s, b, l, f, fr, fl) iocp_w_recvfrom((s), (b), (l), (f), (fr), (fl))
#define getsockname(s, n, l) iocp_w_getsockname((s), (n), (l))
#define getpeername(s, n, l) iocp_w_getpeername((s), (n), (l))
#define getsockopt(s, lv, o, v, l) iocp_w_getsockopt((s), (lv), (o), (v), (l))
#define setsockopt(s, lv, o, v, l) iocp_w_setsockopt((s), (lv), (o), (const char *)(v), (l))
#define shutdown(s, h) iocp_w_shutdown((s), (h))
#endif

#endif /* IOCP_WIN32_WINSOCK2_H */

/* strsafe.h - the narrow (ANSI) StringCch and StringCb families for Windows programs on libiocp
 * (see windows.h). Each always NUL-terminates its destination when it has room for one
 * character; on truncation it returns STRSAFE_E_INSUFFICIENT_BUFFER with the truncated result
 * in place, as Windows does. The wide (W) forms are not provided: see docs/PORTING.md. */
#ifndef IOCP_WIN32_STRSAFE_H
#define IOCP_WIN32_STRSAFE_H
#include "windows.h"

#define STRSAFE_MAX_CCH 2147483647
#define STRSAFE_E_INSUFFICIENT_BUFFER ((HRESULT)0x8007007AL)
#define STRSAFE_E_INVALID_PARAMETER ((HRESULT)0x80070057L)
#define STRSAFE_E_END_OF_FILE ((HRESULT)0x80070026L)
typedef char *STRSAFE_LPSTR;
typedef const char *STRSAFE_LPCSTR;

static inline HRESULT StringCchVPrintfA(STRSAFE_LPSTR dst, size_t cch, STRSAFE_LPCSTR fmt,
                                        va_list ap) {
    if (!dst || cch == 0 || cch > STRSAFE_MAX_CCH || !fmt) return STRSAFE_E_INVALID_PARAMETER;
    int n = vsnprintf(dst, cch, fmt, ap);
    if (n < 0) {
        dst[0] = 0;
        return STRSAFE_E_INVALID_PARAMETER;
    }
    return (size_t)n >= cch ? STRSAFE_E_INSUFFICIENT_BUFFER : S_OK;
}
static inline HRESULT StringCchPrintfA(STRSAFE_LPSTR dst, size_t cch, STRSAFE_LPCSTR fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline HRESULT StringCchPrintfA(STRSAFE_LPSTR dst, size_t cch, STRSAFE_LPCSTR fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    HRESULT r = StringCchVPrintfA(dst, cch, fmt, ap);
    va_end(ap);
    return r;
}
static inline HRESULT StringCbVPrintfA(STRSAFE_LPSTR dst, size_t cb, STRSAFE_LPCSTR fmt,
                                       va_list ap) {
    return StringCchVPrintfA(dst, cb, fmt, ap);
}
static inline HRESULT StringCbPrintfA(STRSAFE_LPSTR dst, size_t cb, STRSAFE_LPCSTR fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline HRESULT StringCbPrintfA(STRSAFE_LPSTR dst, size_t cb, STRSAFE_LPCSTR fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    HRESULT r = StringCchVPrintfA(dst, cb, fmt, ap);
    va_end(ap);
    return r;
}
/* Copies at most `max` characters of `src` (all of it for STRSAFE_MAX_CCH). */
static inline HRESULT StringCchCopyNA(STRSAFE_LPSTR dst, size_t cch, STRSAFE_LPCSTR src,
                                      size_t max) {
    if (!dst || cch == 0 || cch > STRSAFE_MAX_CCH) return STRSAFE_E_INVALID_PARAMETER;
    if (!src) {
        dst[0] = 0;
        return STRSAFE_E_INVALID_PARAMETER;
    }
    size_t n = strnlen(src, max);
    HRESULT r = S_OK;
    if (n >= cch) {
        n = cch - 1;
        r = STRSAFE_E_INSUFFICIENT_BUFFER;
    }
    memmove(dst, src, n);
    dst[n] = 0;
    return r;
}
static inline HRESULT StringCchCopyA(STRSAFE_LPSTR dst, size_t cch, STRSAFE_LPCSTR src) {
    return StringCchCopyNA(dst, cch, src, STRSAFE_MAX_CCH);
}
static inline HRESULT StringCbCopyA(STRSAFE_LPSTR dst, size_t cb, STRSAFE_LPCSTR src) {
    return StringCchCopyNA(dst, cb, src, STRSAFE_MAX_CCH);
}
static inline HRESULT StringCbCopyNA(STRSAFE_LPSTR dst, size_t cb, STRSAFE_LPCSTR src,
                                     size_t cbmax) {
    return StringCchCopyNA(dst, cb, src, cbmax);
}
static inline HRESULT StringCchCatNA(STRSAFE_LPSTR dst, size_t cch, STRSAFE_LPCSTR src,
                                     size_t max) {
    if (!dst || cch == 0 || cch > STRSAFE_MAX_CCH) return STRSAFE_E_INVALID_PARAMETER;
    size_t have = strnlen(dst, cch);
    if (have == cch) return STRSAFE_E_INVALID_PARAMETER; /* not terminated within cch */
    return StringCchCopyNA(dst + have, cch - have, src, max);
}
static inline HRESULT StringCchCatA(STRSAFE_LPSTR dst, size_t cch, STRSAFE_LPCSTR src) {
    return StringCchCatNA(dst, cch, src, STRSAFE_MAX_CCH);
}
static inline HRESULT StringCbCatA(STRSAFE_LPSTR dst, size_t cb, STRSAFE_LPCSTR src) {
    return StringCchCatNA(dst, cb, src, STRSAFE_MAX_CCH);
}
static inline HRESULT StringCbCatNA(STRSAFE_LPSTR dst, size_t cb, STRSAFE_LPCSTR src,
                                    size_t cbmax) {
    return StringCchCatNA(dst, cb, src, cbmax);
}
static inline HRESULT StringCchLengthA(STRSAFE_LPCSTR s, size_t cchmax, size_t *len) {
    if (!s || cchmax > STRSAFE_MAX_CCH) {
        if (len) *len = 0;
        return STRSAFE_E_INVALID_PARAMETER;
    }
    size_t n = strnlen(s, cchmax);
    if (len) *len = n == cchmax ? 0 : n;
    return n == cchmax ? STRSAFE_E_INVALID_PARAMETER : S_OK;
}
static inline HRESULT StringCbLengthA(STRSAFE_LPCSTR s, size_t cbmax, size_t *len) {
    return StringCchLengthA(s, cbmax, len);
}

#ifdef UNICODE
#error "libiocp's strsafe.h has the narrow (A) forms only: build without UNICODE (docs/PORTING.md)"
#endif
#define StringCchPrintf StringCchPrintfA
#define StringCchVPrintf StringCchVPrintfA
#define StringCbPrintf StringCbPrintfA
#define StringCbVPrintf StringCbVPrintfA
#define StringCchCopy StringCchCopyA
#define StringCchCopyN StringCchCopyNA
#define StringCbCopy StringCbCopyA
#define StringCbCopyN StringCbCopyNA
#define StringCchCat StringCchCatA
#define StringCchCatN StringCchCatNA
#define StringCbCat StringCbCatA
#define StringCbCatN StringCbCatNA
#define StringCchLength StringCchLengthA
#define StringCbLength StringCbLengthA

#endif

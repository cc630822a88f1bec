/* tchar.h - the TCHAR mappings for Windows programs on libiocp (see windows.h): the narrow
 * (MBCS/ANSI) build only, where TCHAR is char and _T("x") is "x". A build with UNICODE or
 * _UNICODE stops here: WCHAR is 16 bits on Windows and glibc's wchar_t 32, so the wide C
 * library cannot stand in (docs/PORTING.md says what such a build must do). */
#ifndef IOCP_WIN32_TCHAR_H
#define IOCP_WIN32_TCHAR_H
#include "windows.h"

#if defined(UNICODE) || defined(_UNICODE)
#error "libiocp supports the narrow TCHAR build only: build without UNICODE/_UNICODE (docs/PORTING.md)"
#endif

typedef char TCHAR, *PTCHAR, _TCHAR, TBYTE, *PTBYTE;
typedef char *LPTSTR, *PTSTR;
typedef const char *LPCTSTR, *PCTSTR;
#define _T(x) x
#define _TEXT(x) x
#define TEXT(x) x
#define _tmain main
#define _tprintf printf
#define _ftprintf fprintf
#define _stprintf sprintf
#define _sntprintf snprintf
#define _vstprintf vsprintf
#define _vsntprintf vsnprintf
#define _tprintf_s printf
#define _ftprintf_s fprintf
#define _stprintf_s sprintf_s
#define _tcslen strlen
#define _tcsnlen strnlen
#define _tcscpy strcpy
#define _tcscpy_s strcpy_s
#define _tcsncpy strncpy
#define _tcscat strcat
#define _tcscat_s strcat_s
#define _tcscmp strcmp
#define _tcsncmp strncmp
#define _tcsicmp strcasecmp
#define _tcsnicmp strncasecmp
#define _tcschr strchr
#define _tcsrchr strrchr
#define _tcsstr strstr
#define _tcstok strtok
#define _tcsdup strdup
#define _tcstol strtol
#define _tcstoul strtoul
#define _tstoi atoi
#define _ttoi atoi
#define _ttol atol
#define _tfopen fopen
#define _fgetts fgets
#define _fputts fputs
#define _puttc putc
#define _totupper toupper
#define _totlower tolower
#define _istdigit isdigit
#define _istspace isspace
#define _istalpha isalpha

#endif

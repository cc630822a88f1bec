/* process.h - _beginthreadex / _endthreadex for Windows programs on libiocp (see windows.h). */
#ifndef IOCP_WIN32_PROCESS_H
#define IOCP_WIN32_PROCESS_H
#include "windows.h"

/* A thread started with _beginthreadex is a CreateThread thread: its HANDLE is waited on and
 * closed with WaitForSingleObject and CloseHandle. */
static inline uintptr_t _beginthreadex(void *security, unsigned stack_size,
                                       unsigned(__stdcall *start_address)(void *), void *arglist,
                                       unsigned initflag, unsigned *thrdaddr) {
    return (uintptr_t)CreateThread((LPSECURITY_ATTRIBUTES)security, stack_size,
                                   (LPTHREAD_START_ROUTINE)start_address, arglist, initflag,
                                   (LPDWORD)thrdaddr);
}
#endif

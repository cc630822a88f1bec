/* The hidden port that runs overlapped I/O on sockets with no completion port (issue 14 §3):
 * its library thread waits in the kernel only while such an operation is in flight, sleeps
 * while none is, and wakes at once for the next one. This program creates no port of its own
 * (print_backend's is closed first), so the only "iocp-reaper" thread is the hidden port's. */
#include "check.h"
#include <dirent.h>
#include <string.h>
#include <unistd.h>

/* The Win32 event calls (the Windows headers declare them; this test uses iocp.h). */
HANDLE CreateEventA(void *attributes, BOOL manual_reset, BOOL initial, const char *name);
DWORD WaitForSingleObject(HANDLE h, DWORD ms);

/* Voluntary context switches of the threads named "iocp-reaper" and how many there are. */
static long reaper_switches(int *threads) {
    *threads = 0;
    long total = 0;
    DIR *d = opendir("/proc/self/task");
    CHECK(d != NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[320], line[256];
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue; /* the thread ended meanwhile */
        int reaper = fgets(line, sizeof line, f) && strcmp(line, "iocp-reaper\n") == 0;
        fclose(f);
        if (!reaper) continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
        f = fopen(path, "r");
        if (!f) continue;
        while (fgets(line, sizeof line, f)) {
            long v;
            if (sscanf(line, "voluntary_ctxt_switches: %ld", &v) == 1) {
                total += v;
                (*threads)++;
            }
        }
        fclose(f);
    }
    closedir(d);
    return total;
}

/* A receive on a socket with no port, completed by the hidden port alone (nobody dequeues):
 * returns how long it took to be reported through the OVERLAPPED after the data was sent. */
static long long receive_without_a_port(SOCKET c, SOCKET s) {
    char buf[8];
    WSABUF wb = {sizeof buf, buf};
    DWORD flags = 0;
    OVERLAPPED ov = {0};
    /* Waited for on its event, not by spinning on the OVERLAPPED: under valgrind a spinning
     * thread can keep the library's thread from running for seconds. */
    ov.hEvent = CreateEventA(NULL, TRUE, FALSE, NULL);
    CHECK(ov.hEvent != NULL);
    HANDLE ev = ov.hEvent;
    CHECK(WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
    long long sent = now_ms();
    send_all(c, "x", 1);
    CHECK_EQ(WaitForSingleObject(ev, 10000), 0);
    long long took = now_ms() - sent;
    CHECK(HasOverlappedIoCompleted(&ov));
    CHECK_EQ(ov.Internal, 0);
    CHECK_EQ(ov.InternalHigh, 1);
    CHECK(buf[0] == 'x');
    CHECK(CloseHandle(ev));
    return took;
}

static void hidden_port_sleeps_while_idle_and_wakes_for_the_next_operation(void) {
    SOCKET c, s;
    tcp_pair(&c, &s);
    receive_without_a_port(c, s);
    /* print_backend's port is closed: its reaper ends within a tick. */
    int threads = 0;
    long long until = now_ms() + 10000;
    do {
        reaper_switches(&threads);
    } while (threads != 1 && now_ms() < until);
    CHECK_EQ(threads, 1);
    /* Idle: over half a second it may finish the wait it was in and go to sleep (a few
     * switches); polling the kernel every 20 ms would be 25 or more. */
    long before = reaper_switches(&threads);
    usleep(500 * 1000);
    long idle = reaper_switches(&threads) - before;
    printf("idle hidden-port reaper: %ld context switches in 500 ms\n", idle);
    CHECK(idle <= 4);
    /* The next operation wakes it at once, not after its idle timeout (1 s). */
    long long took = receive_without_a_port(c, s);
    printf("woken: the next receive reported in %lld ms\n", took);
    CHECK(took < 900);
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
}

int main(void) {
    start_deadline();
    signal(SIGPIPE, SIG_IGN);
    WSADATA wsa;
    CHECK(WSAStartup(MAKEWORD(2, 2), &wsa) == 0);
    print_backend();
    RUN(hidden_port_sleeps_while_idle_and_wakes_for_the_next_operation);
    CHECK(WSACleanup() == 0);
    return 0;
}

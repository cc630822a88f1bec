#!/usr/bin/env bash
# Echo servers compared: iocp (io_uring and epoll backends) against tokio, monoio, a plain C
# epoll server (and a C io_uring one, and libiocp's C example, when built), all driven by the
# same `iocp bench echo --json` on its own epoll engine (not the iocp library) with as many
# generator threads as the servers have (--server-threads, default: the CPUs), each thread its
# own epoll loop. Cases 50 x 64 B, 50 x 4 KiB and 1000 x 64 B, then a scale row (19,000
# connections opened with --ramp, 1,000 of them active: connect time, server RSS per
# connection, msgs/s). At least 3 interleaved repetitions (round-robin over the servers, the
# order rotated each repetition), medians and ratios against tokio; tokio is measured twice,
# the second instance showing the noise floor. Server CPU per message from /proc/PID/stat
# beside every rate.
#
#   bench/compare-echo.sh [--quick] [--duration S] [--reps N] [--write] [--cases 50x64,...]
#                         [--server-threads N] [--scale CONNSxACTIVE|off]
#
# --quick: 1 repetition of 2 s, scale row 2000x200 (a smoke test, not a comparison). --write:
# replace the echo-compare section of BENCHMARKS.md. Raw results go to bench/results/
# (bench/results/quick/ with --quick).
# Every server is killed on exit; every run has a deadline.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '== %s\n' "$*" >&2; }

step "building iocp (release)"
cargo build --release -p iocp-cli --quiet

step "building the peers (bench/peers, release)"
(cd bench/peers && cargo build --release --quiet)

step "building the C servers"
mkdir -p bench/peers/target/c
gcc -O2 -Wall -Wextra -o bench/peers/target/c/epoll_echo bench/peers/c/epoll_echo.c -lpthread
if [ -f bench/peers/c/uring_echo.c ]; then
    if [ ! -f /usr/include/liburing.h ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "installing liburing-dev (apt-get) for the C io_uring peer"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq liburing-dev; } \
            >/dev/null 2>&1 || true
    fi
    if [ -f /usr/include/liburing.h ]; then
        gcc -O2 -Wall -Wextra -o bench/peers/target/c/uring_echo bench/peers/c/uring_echo.c \
            -luring -lpthread
    else
        echo "compare: liburing-dev is not installed: c-uring will be skipped" >&2
    fi
fi

step "building libiocp's C echo example (crates/iocp-ffi/examples/c/echo_server.c)"
cargo build --release -p iocp-ffi --quiet
gcc -O2 -Wall -Wextra -I crates/iocp-ffi/include -o bench/peers/target/c/libiocp_echo \
    crates/iocp-ffi/examples/c/echo_server.c target/release/libiocp.a -lpthread -ldl -lm -lgcc_s
# The scale row's 19,000 connections need descriptors on each side (the servers inherit this).
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
ulimit -n "$hard" 2>/dev/null || true
step "ulimit -n $(ulimit -n)"

# compare.py kills its servers (each in its own process group) on exit and on SIGINT/SIGTERM;
# should it die without doing so, this trap kills the groups it left in the pid file.
pidfile=$(mktemp)
cleanup() {
    if [ -n "${py:-}" ]; then kill -TERM "$py" 2>/dev/null || true; wait "$py" 2>/dev/null || true; fi
    while read -r pgid; do kill -KILL -- "-$pgid" 2>/dev/null || true; done < "$pidfile"
    rm -f "$pidfile"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
COMPARE_PIDFILE=$pidfile python3 "$root/bench/compare.py" echo "$@" &
py=$!
status=0
wait "$py" || status=$?
py=
exit "$status"

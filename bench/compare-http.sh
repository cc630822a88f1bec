#!/usr/bin/env bash
# HTTP static files compared: `iocp serve http` against nginx configured as in production
# (worker_processes = the server threads, `listen ... reuseport` so each worker has its own
# accept queue, sendfile on, tcp_nopush on, access_log off, keepalive_requests 1000000, under a
# temporary prefix on loopback), the same docroot, loaded by `wrk -tN -c100 --latency` with N =
# the server threads (--server-threads, default: the CPUs) on 1 KiB, 64 KiB and 1 MiB files.
# At least 3 interleaved repetitions (the order rotated each repetition), medians and ratios
# against nginx, measured twice (the second instance is the noise floor). Server CPU per
# request from /proc/PID/stat (nginx: master + workers) beside every rate.
#
#   bench/compare-http.sh [--quick] [--duration S] [--reps N] [--write] [--server-threads N]
#
# Installs nginx and wrk with apt-get when they are missing. --quick: 1 repetition of 2 s.
# --write: replace the http-compare section of BENCHMARKS.md. Raw results go to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '== %s\n' "$*" >&2; }

if ! command -v wrk >/dev/null || ! { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }; then
    step "installing nginx and wrk (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
fi
# The package's own nginx service is not wanted: ours runs under a temporary prefix.
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
    echo "compare: note: a system nginx service is running; it does not use our ports" >&2
fi

step "building iocp (release)"
cargo build --release -p iocp-cli --quiet

hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -gt 20000 ]; then hard=20000; fi
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
COMPARE_PIDFILE=$pidfile python3 "$root/bench/compare.py" http "$@" &
py=$!
status=0
wait "$py" || status=$?
py=
exit "$status"

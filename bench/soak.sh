#!/usr/bin/env bash
# The soak benchmark (issue 11): connect/echo/close churn against `iocp serve echo --threads 2`
# in rounds of 5,000 connections for 10 minutes per backend (io_uring, then epoll; never both
# at once), checking every byte and sampling the server's RSS after each settled round. The
# generator is std's blocking sockets, not the iocp library. Prints a progress line every 10 s,
# then a table; the figures go to bench/results/soak-STAMP.json.
#
#   bench/soak.sh [--minutes M] [--conns N] [--backends uring,epoll] [--close handshake|drop]
#
# --close handshake (the default): each client shuts down its side and reads the server's FIN
# before the next round, so the server never holds more than N connections. --close drop: the
# clients just close and the next round overlaps the server's closes (its peak goes above N).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=10 conns=5000 backends=uring,epoll close=handshake
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes=$2; shift 2 ;;
        --conns) conns=$2; shift 2 ;;
        --backends) backends=$2; shift 2 ;;
        --close) close=$2; shift 2 ;;
        *) echo "usage: bench/soak.sh [--minutes M] [--conns N] [--backends uring,epoll] [--close handshake|drop]" >&2; exit 2 ;;
    esac
done
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
ulimit -n "$hard"
mkdir -p bench/results
out=bench/results/soak-$(date -u +%Y%m%dT%H%M%SZ).json
printf '== building (release)\n' >&2
cargo test --release -p iocp-cli --test soak --no-run --quiet
printf '== soak: %s connections at once, %s min per backend (%s), %s close; results: %s\n' \
    "$conns" "$minutes" "$backends" "$close" "$out" >&2
IOCP_SOAK_SECS=$((minutes * 60)) IOCP_SOAK_CONNS=$conns IOCP_SOAK_BACKENDS=$backends IOCP_SOAK_CLOSE=$close \
IOCP_SOAK_JSON=$PWD/$out \
    timeout $((minutes * 60 * 2 + 600)) \
    cargo test --release -p iocp-cli --test soak --quiet -- --ignored --nocapture soak_benchmark

#!/usr/bin/env bash
# The cost of `--metrics` on the hot path: `iocp serve echo --threads N` on each backend,
# without `--metrics` twice (the second instance shows the noise floor) and with `--metrics`
# while /metrics is fetched once a second, all driven by `iocp bench echo -c 50 -s 64` on its
# own epoll engine (not the iocp library) with as many threads as the server. Interleaved
# repetitions (the order rotated each one), medians, ratios against the first instance without;
# the server's CPU time per message beside every rate.
#
#   bench/metrics-cost.sh [--reps N] [--duration S] [--quick] [--write]
#
# Defaults: 5 repetitions of 5 s (about 4 minutes). --write replaces the metrics-cost section
# of BENCHMARKS.md; raw results go to bench/results/metrics-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
printf '== building iocp (release)\n' >&2
cargo build --release -p iocp-cli --quiet
pidfile=$(mktemp)
cleanup() {
    if [ -n "${py:-}" ]; then kill -TERM "$py" 2>/dev/null || true; wait "$py" 2>/dev/null || true; fi
    while read -r pgid; do kill -KILL -- "-$pgid" 2>/dev/null || true; done < "$pidfile"
    rm -f "$pidfile"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
args=("$@")
case " $* " in *" --reps "*|*" --quick "*) ;; *) args=(--reps 5 "${args[@]}") ;; esac
COMPARE_PIDFILE=$pidfile python3 "$root/bench/compare.py" metrics "${args[@]}" &
py=$!
status=0
wait "$py" || status=$?
py=
exit "$status"

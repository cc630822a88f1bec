#!/usr/bin/env bash
# Where an echo server's CPU goes, per message: `perf stat` attached to the server while
# `iocp bench echo` (its own epoll engine, as many threads as the server) loads it. Counts that
# do not depend on the machine's noise (this VM has no hardware counters): system calls (by kind), futex calls,
# context switches, and (with --record) a call-graph profile.
#
#   bench/profile-echo.sh [--servers iocp-uring,iocp-epoll,c-uring,c-epoll,tokio]
#                         [--cases 50x64,1000x64] [--duration S] [--threads N] [--record]
#                         [--bin PATH]
#
# Prints one table row per server and case (per message: server CPU µs (task-clock), syscalls,
# io_uring_enter, epoll_wait, futex, read/write/send/recv, context switches) and writes the raw counts as JSON lines
# to bench/results/profile-echo.jsonl. --record also writes perf.data per run to
# bench/results/perf/ and a flat report (top symbols, children included) beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

servers=iocp-uring,iocp-epoll,c-uring
cases=50x64,1000x64
duration=5
threads=2
record=0
bin=$root/target/release/iocp
while [ $# -gt 0 ]; do
    case $1 in
        --servers) servers=$2; shift 2 ;;
        --cases) cases=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --record) record=1; shift ;;
        --bin) bin=$2; shift 2 ;;
        *) echo "profile-echo: unknown argument $1" >&2; exit 2 ;;
    esac
done

command -v perf >/dev/null || { echo "profile-echo: perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
[ -x "$bin" ] || cargo build --release -p iocp-cli --quiet
gen=$root/target/release/iocp
[ -x "$gen" ] || cargo build --release -p iocp-cli --quiet
mkdir -p bench/peers/target/c bench/results/perf
if [[ $servers == *c-uring* ]] && [ ! -x bench/peers/target/c/uring_echo ]; then
    gcc -O2 -Wall -o bench/peers/target/c/uring_echo bench/peers/c/uring_echo.c -luring -lpthread
fi
if [[ $servers == *c-epoll* ]] && [ ! -x bench/peers/target/c/epoll_echo ]; then
    gcc -O2 -Wall -o bench/peers/target/c/epoll_echo bench/peers/c/epoll_echo.c -lpthread
fi
if [[ $servers == *tokio* ]] && [ ! -x bench/peers/target/release/tokio-echo ]; then
    (cd bench/peers && cargo build --release --quiet --bin tokio-echo)
fi
ulimit -n 20000 2>/dev/null || true

port=17411
events=task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_write,syscalls:sys_enter_read
out=bench/results/profile-echo.jsonl
: > "$out.new"
printf '%-11s %-8s %9s %8s %8s %8s %8s %8s %8s %8s\n' server case msgs/s cpu-us sys/msg enter ewait futex r+w cs/msg
IFS=, read -ra S <<< "$servers"
IFS=, read -ra C <<< "$cases"
for case in "${C[@]}"; do
    conns=${case%x*}; size=${case#*x}
    for s in "${S[@]}"; do
        port=$((port + 1))
        addr=127.0.0.1:$port
        case $s in
            iocp-uring) cmd=("$bin" serve echo --addr "$addr" --threads "$threads" --backend uring --max-connections 100000) ;;
            iocp-epoll) cmd=("$bin" serve echo --addr "$addr" --threads "$threads" --backend epoll --max-connections 100000) ;;
            c-uring) cmd=(bench/peers/target/c/uring_echo --addr "$addr" --threads "$threads") ;;
            c-epoll) cmd=(bench/peers/target/c/epoll_echo --addr "$addr" --threads "$threads") ;;
            tokio) cmd=(bench/peers/target/release/tokio-echo --addr "$addr" --threads "$threads") ;;
            *) echo "profile-echo: unknown server $s" >&2; exit 2 ;;
        esac
        "${cmd[@]}" >/dev/null 2>&1 &
        spid=$!
        # Wait (with a deadline) until it listens.
        for _ in $(seq 100); do
            (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
            sleep 0.05
        done
        tag=$s-$case
        if [ $record = 1 ]; then
            perf record -g -o "bench/results/perf/$tag.data" -p "$spid" -- sleep $((duration + 1)) >/dev/null 2>&1 &
        else
            perf stat -x, -e "$events" -p "$spid" -o "bench/results/perf/$tag.stat" -- sleep $((duration + 1)) &
        fi
        ppid=$!
        json=$("$gen" bench echo --addr "$addr" -c "$conns" -s "$size" -t "$threads" \
                 -d "${duration}s" --warmup 0s --json 2>/dev/null | tail -n1) || true
        wait "$ppid" || true
        kill -TERM "$spid" 2>/dev/null || true
        wait "$spid" 2>/dev/null || true
        msgs=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d.get("msgs") or d.get("requests") or 0)' "$json" 2>/dev/null || echo 0)
        rate=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(round(d.get("rate") or d.get("per_sec") or 0))' "$json" 2>/dev/null || echo 0)
        if [ $record = 1 ]; then
            perf report -i "bench/results/perf/$tag.data" --children --stdio --no-demangle 2>/dev/null \
                | grep -v '^#' | grep -v '^$' | head -200 > "bench/results/perf/$tag.txt" || true
            perf report -i "bench/results/perf/$tag.data" --no-children --stdio -g none --percent-limit 0.7 2>/dev/null \
                | grep -v '^#' | grep -v '^$' | head -60 > "bench/results/perf/$tag.flat.txt" || true
            printf '%-11s %-8s %9s  (profile: bench/results/perf/%s.flat.txt)\n' "$s" "$case" "$rate" "$tag"
            continue
        fi
        python3 - "$s" "$case" "$msgs" "$rate" "bench/results/perf/$tag.stat" "$out.new" <<'EOF'
import json, sys
name, case, msgs, rate, stat, out = sys.argv[1:]
msgs = float(msgs) or float("nan")
c = {}
for line in open(stat):
    parts = line.strip().split(",")
    if len(parts) < 3 or line.startswith("#"):
        continue
    try:
        c[parts[2]] = float(parts[0])
    except ValueError:
        c[parts[2]] = float("nan")
def per(k):
    return c.get(k, float("nan")) / msgs
row = dict(server=name, case=case, msgs=msgs, rate=float(rate), counts=c)
open(out, "a").write(json.dumps(row) + "\n")
rw = per('syscalls:sys_enter_read') + per('syscalls:sys_enter_write') + per('syscalls:sys_enter_sendto') + per('syscalls:sys_enter_recvfrom')
print(f"{name:<11} {case:<8} {float(rate):9.0f} {per('task-clock') * 1000:8.2f} "
      f"{per('raw_syscalls:sys_enter'):8.2f} {per('syscalls:sys_enter_io_uring_enter'):8.2f} "
      f"{per('syscalls:sys_enter_epoll_wait'):8.2f} {per('syscalls:sys_enter_futex'):8.2f} {rw:8.2f} "
      f"{per('context-switches'):8.2f}")
EOF
    done
done
[ $record = 1 ] || mv "$out.new" "$out"

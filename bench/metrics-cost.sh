#!/usr/bin/env bash
# echo msgs/s with and without --metrics scraped every second; interleaved reps.
cd "$(dirname "$0")/.." && cargo build --release -q -p iocp-cli
B=$PWD/target/release/iocp
for rep in 1 2 3; do
  for mode in plain metrics; do
    if [ $mode = metrics ]; then
      $B serve echo --threads 2 --addr 127.0.0.1:7411 --metrics 127.0.0.1:7412 2>/dev/null & P=$!
    else
      $B serve echo --threads 2 --addr 127.0.0.1:7411 2>/dev/null & P=$!
    fi
    for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/7411) 2>/dev/null && break; sleep 0.1; done
    S=""
    if [ $mode = metrics ]; then
      ( for i in $(seq 8); do curl -s -o /dev/null --max-time 1 http://127.0.0.1:7412/metrics; sleep 1; done ) & S=$!
    fi
    r=$($B bench echo --addr 127.0.0.1:7411 -c 50 -s 64 -d 5s --threads 2 --server-pid $P --json 2>/dev/null | head -1)
    echo "$rep $mode $(echo "$r" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(round(d.get("msgs_per_sec") or d.get("rate") or 0), d.get("server_cpu_us_per_msg") or d.get("server_cpu_us"))')"
    [ -n "$S" ] && wait $S
    kill -INT $P; wait $P 2>/dev/null
  done
done

#!/usr/bin/env bash
# Chat servers compared: `iocp serve chat` against a tokio + tokio-tungstenite broadcast chat
# (bench/peers/src/bin/tokio-chat.rs, a broadcast channel per room), both driven by the same
# `iocp bench chat --json` (tungstenite clients multiplexed over its own epoll loops, not the
# iocp library). Cases: 1,000 clients in 10 rooms and 5,000 clients in 1 room, each client
# sending at a set rate. Every run starts a fresh server, waits for its port, loads it and stops
# it; the servers run round-robin in each repetition (the order rotated every repetition), at
# least 3 repetitions, medians. tokio runs twice (tokio-b: the noise floor), and a third time as
# tokio-feed (TOKIO_CHAT_FEED=1: what a room holds goes out in one write, `feed` then `flush`,
# not one `send` per message as the docs' examples do). Server CPU per
# delivery (utime + stime from /proc/PID/stat over the window) beside every rate. The second
# peer, node-ws (bench/peers/node-chat/server.js: Node.js + ws, one JavaScript thread, as a
# single-process Node chat runs), joins when node and npm are installed. iocp runs with
# `--presence-max 0` (no join/leave events; the peer has none) and its rate limit raised.
#
#   bench/compare-chat.sh [--reps N] [--duration S] [--threads N] [--cases 1000x10@2,5000x1@0.01,1000x10@8]
#                         [--servers iocp,iocp-skip,tokio,tokio-b,tokio-feed,node-ws]
#   IOCP_BASE_BIN=<an older iocp binary> adds the server name iocp-base (a before/after row)
#
# A case is CLIENTSxROOMS@RATE (messages per second per client); the first two offer about
# 200k and 250k deliveries/s, the third 800k/s, more than this machine delivers (a saturation
# point: what comes within the 2 s drain counts, the rest are drops). Raw results go to
# bench/results/chat-<time>.json; the medians table is printed (markdown) on stdout.
# Every server is killed on exit; every wait has a deadline.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '== %s\n' "$*" >&2; }

step "building iocp (release)"
cargo build --release -p iocp-cli --quiet
step "building the peers (bench/peers, release)"
(cd bench/peers && cargo build --release --quiet --bin tokio-chat)
# The second peer, Node.js + ws (bench/peers/node-chat), when node and npm are installed.
if command -v node >/dev/null && command -v npm >/dev/null; then
    step "installing the node-ws peer (npm ci in bench/peers/node-chat)"
    (cd bench/peers/node-chat && npm ci --no-audit --no-fund --silent) || step "node-ws: npm ci failed; skipped"
fi

# 5,000 clients need descriptors on both sides (the servers inherit this).
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
step "ulimit -n $(ulimit -n)"

pidfile=$(mktemp)
cleanup() {
    if [ -n "${py:-}" ]; then kill -TERM "$py" 2>/dev/null || true; wait "$py" 2>/dev/null || true; fi
    while read -r pgid; do kill -KILL -- "-$pgid" 2>/dev/null || true; done < "$pidfile"
    rm -f "$pidfile"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

COMPARE_PIDFILE=$pidfile ROOT=$root python3 - "$@" <<'PY' &
import argparse, datetime, json, os, signal, socket, statistics, subprocess, sys, time

ROOT = os.environ["ROOT"]
IOCP = os.path.join(ROOT, "target", "release", "iocp")
PEER = os.path.join(ROOT, "bench", "peers", "target", "release", "tokio-chat")
NODE_PEER = os.path.join(ROOT, "bench", "peers", "node-chat", "server.js")
HAVE_NODE = os.path.isdir(os.path.join(ROOT, "bench", "peers", "node-chat", "node_modules", "ws"))
PIDFILE = os.environ["COMPARE_PIDFILE"]
RUNNING = []

ap = argparse.ArgumentParser()
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--duration", type=float, default=3.0)
ap.add_argument("--threads", type=int, default=2, help="server threads and generator threads")
ap.add_argument("--cases", default="1000x10@2,5000x1@0.01,1000x10@8")
ap.add_argument("--servers", help="comma-separated subset of iocp, iocp-skip, tokio, tokio-b, "
                "tokio-feed, node-ws (default: all but iocp-skip)")
a = ap.parse_args()

def log(m):
    print(m, file=sys.stderr, flush=True)

def note():
    with open(PIDFILE, "w") as f:
        f.writelines(f"{p.pid}\n" for p in RUNNING)

def stop(p):
    if p in RUNNING:
        RUNNING.remove(p)
        note()
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=5)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)

def on_signal(n, _f):
    for p in list(RUNNING):
        stop(p)
    sys.exit(130)

signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)

PORT = 18090
def server_cmd(name):
    addr = f"127.0.0.1:{PORT}"
    if name in ("iocp", "iocp-skip", "iocp-base"):
        # The rate limit raised so that it never refuses the load, and no presence events
        # (join/leave to the whole room): the peer has neither. With presence, 5,000 joins to
        # one room are 12.5 million events and the setup alone takes minutes here.
        # iocp-skip: a slow client skips to the newest messages instead of being dropped, as
        # tokio's lagging receivers do (the like-for-like policy above saturation).
        skip = ["--slow", "skip"] if name == "iocp-skip" else []
        binary = os.environ["IOCP_BASE_BIN"] if name == "iocp-base" else IOCP
        return [binary, "serve", "chat", "--addr", addr, "--threads", str(a.threads),
                "--rate", "100000", "--burst", "100000", "--presence-max", "0"] + skip
    if name == "node-ws":
        return ["node", NODE_PEER, "--addr", addr, "--threads", str(a.threads)]
    return [PEER, "--addr", addr, "--threads", str(a.threads)]

def wait_port(p, limit=10.0):
    end = time.time() + limit
    while time.time() < end:
        if p.poll() is not None:
            raise SystemExit(f"compare-chat: the server exited ({p.returncode})")
        try:
            socket.create_connection(("127.0.0.1", PORT), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("compare-chat: the server did not listen within 10 s")

def run(name, clients, rooms, rate):
    env = dict(os.environ, RUST_LOG="warn")
    env.pop("IOCP_BACKEND", None)
    if name == "tokio-feed":
        env["TOKIO_CHAT_FEED"] = "1"
        name = "tokio"
    p = subprocess.Popen(server_cmd(name), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, env=env)
    RUNNING.append(p)
    note()
    try:
        wait_port(p)
        cmd = [IOCP, "bench", "chat", "--url", f"ws://127.0.0.1:{PORT}/ws", "-c", str(clients),
               "-r", str(rooms), "--rate", str(rate), "-d", f"{a.duration}s", "--warmup", "1s",
               "-t", str(a.threads), "--timeout", "20s", "--server-pid", str(p.pid), "--json"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
        if not line.startswith("{"):
            log(f"compare-chat: {name}: no report: {out.stderr.strip()[:400]}")
            return None
        return json.loads(line)
    finally:
        stop(p)
        time.sleep(0.3)  # let the TIME_WAITs and the CPU settle

servers = ["iocp", "tokio", "tokio-b", "tokio-feed"] + (["node-ws"] if HAVE_NODE else [])
if not HAVE_NODE:
    log("compare-chat: SKIP node-ws (no node, or npm ci did not run)")
if a.servers:
    known = servers + ["iocp-skip"] + (["iocp-base"] if os.environ.get("IOCP_BASE_BIN") else [])
    servers = [s for s in a.servers.split(",") if s]
    for s in servers:
        if s not in known:
            raise SystemExit(f"compare-chat: unknown server {s!r} (known: {', '.join(known)})")
    if "tokio" not in servers:
        raise SystemExit("compare-chat: --servers must include tokio (the baseline)")
cases = []
for c in a.cases.split(","):
    cr, rate = c.split("@")
    cl, rooms = cr.split("x")
    cases.append((int(cl), int(rooms), float(rate)))

raw = {}
started = time.time()
for (cl, rooms, rate) in cases:
    key = f"{cl}x{rooms}@{rate}"
    raw[key] = {s: [] for s in servers}
    for rep in range(a.reps):
        order = servers[rep % len(servers):] + servers[:rep % len(servers)]
        for s in order:
            r = run("tokio" if s == "tokio-b" else s, cl, rooms, rate)
            if r:
                raw[key][s].append(r)
                log(f"  {key} rep {rep + 1} {s:8} {r['rate']:>10.0f} deliveries/s  p99 "
                    f"{r['latency_us']['p99']:>8.0f} us  drops {r['drops']}  dropped clients "
                    f"{r['clients_dropped']}  server {r['server_cpu_us_per_delivery']} us/delivery"
                    f"  setup {r['setup_s']} s")

stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
path = os.path.join(ROOT, "bench", "results", f"chat-{stamp}.json")
load1 = os.getloadavg()[0]
with open(path, "w") as f:
    json.dump({"args": vars(a), "loadavg_at_end": os.getloadavg(), "runs": raw}, f, indent=1)

def med(rs, f):
    xs = [f(r) for r in rs if f(r) is not None]
    return statistics.median(xs) if xs else None

print(f"\nmedians of {a.reps} interleaved runs, {a.duration:g} s windows after 1 s warm-up; "
      f"server and generator {a.threads} threads each; load average at the end {load1:.2f}; "
      f"raw: bench/results/chat-{stamp}.json; {time.time() - started:.0f} s in all\n")
print("| case | server | deliveries/s | vs tokio | p50 µs | p99 µs | p99.9 µs | server CPU µs/delivery | generator CPU µs/delivery | drops | clients dropped | setup s |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for key, by in raw.items():
    base = med(by["tokio"], lambda r: r["rate"])
    for s in servers:
        rs = by[s]
        if not rs:
            print(f"| {key} | {s} | (no run) | | | | | | | | | |")
            continue
        rate = med(rs, lambda r: r["rate"])
        ratio = f"{rate / base:.2f}×" if base else "-"
        cpu = med(rs, lambda r: r["server_cpu_us_per_delivery"])
        cpu = f"{cpu:.3f}" if cpu is not None else "-"
        print(f"| {key} | {s} | {rate:,.0f} | {ratio} | {med(rs, lambda r: r['latency_us']['p50']):,.0f} | "
              f"{med(rs, lambda r: r['latency_us']['p99']):,.0f} | {med(rs, lambda r: r['latency_us']['p999']):,.0f} | "
              f"{cpu} | {med(rs, lambda r: r['gen_cpu_us_per_delivery']):.3f} | {sum(r['drops'] for r in rs)} | {sum(r['clients_dropped'] for r in rs)} | "
              f"{med(rs, lambda r: r['setup_s']):.1f} |")
PY
py=$!
status=0
wait "$py" || status=$?
py=
exit "$status"

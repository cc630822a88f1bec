#!/usr/bin/env python3
"""Server memory per idle WebSocket client: `iocp serve chat` against the tokio-tungstenite peer.

For each server (a fresh process per run, release builds, 2 worker threads): 100 warm-up
clients upgrade, then N more; every client's socket is read dry (what the server sends on
join: the welcome, presence events, history) until the whole set has been quiet for a second,
and then the server sits for `--settle` seconds (past `--park-after`, so idle connections have
parked and hold no buffers). The figure is the growth of the server's RSS from after the
warm-up to the end, divided by N. Servers run round-robin, the order rotated each repetition;
medians of the repetitions. The tokio peer runs twice (`tokio`, `tokio-b`): the noise floor.
The second peer, `node-ws` (Node.js + ws, bench/peers/node-chat), runs when node is installed
and `npm ci` has run there.

  ulimit -n 20000; python3 bench/chat-idle-memory.py [--clients 5000] [--reps 3] [--json F]
      [--only NAME,...] [--before OLD_IOCP_BINARY]

Rows: iocp on io_uring and on epoll with `--presence-max 0` (the peer sends no presence
events: the same traffic), and iocp on io_uring with presence on (the default: every join is
an event to the whole room, so N joins are N*N/2 events that must be delivered and freed).
"""
import argparse, base64, json, os, re, resource, selectors, shutil, socket, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IOCP = os.path.join(ROOT, "target", "release", "iocp")
PEER = os.path.join(ROOT, "bench", "peers", "target", "release", "tokio-chat")


def servers(before=None):
    common = ["serve", "chat", "--threads", "2", "--idle-timeout", "0", "--park-after", "1",
              "--max-connections", "20000", "--rate", "100000", "--burst", "100000"]
    t = {
        "iocp-uring": ([IOCP] + common + ["--backend", "uring", "--presence-max", "0"], "--addr"),
        "iocp-epoll": ([IOCP] + common + ["--backend", "epoll", "--presence-max", "0"], "--addr"),
        "iocp-uring-presence": ([IOCP] + common + ["--backend", "uring"], "--addr"),
        "tokio": ([PEER, "--threads", "2"], "--addr"),
        "tokio-b": ([PEER, "--threads", "2"], "--addr"),
    }
    node = os.path.join(ROOT, "bench", "peers", "node-chat")
    if shutil.which("node") and os.path.isdir(os.path.join(node, "node_modules", "ws")):
        # The second peer (Node.js + ws, one thread; `npm ci` in bench/peers/node-chat).
        t["node-ws"] = ([shutil.which("node"), os.path.join(node, "server.js")], "--addr")
    if before:
        # Another build of iocp (an earlier commit), for a before/after row.
        t["iocp-uring-before"] = ([before] + common + ["--backend", "uring", "--presence-max", "0"], "--addr")
    return t


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) * 1024


def upgrade(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    s.setblocking(False)
    return s


def drain(socks, quiet=1.0, limit=120.0):
    """Reads every socket until none has had data for `quiet` seconds; returns bytes read."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    total, last, end = 0, time.time(), time.time() + limit
    while time.time() - last < quiet:
        if time.time() > end:
            raise SystemExit(f"the server kept sending for {limit} s")
        for key, _ in sel.select(timeout=0.2):
            try:
                d = key.fileobj.recv(1 << 16)
            except BlockingIOError:
                continue
            if not d:
                raise SystemExit("the server closed an idle client")
            total += len(d)
            last = time.time()
    sel.close()
    return total


def run(name, cmd, addr_flag, n, settle):
    port = free_port()
    p = subprocess.Popen(cmd + [addr_flag, f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))
    try:
        end = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > end or p.poll() is not None:
                    raise SystemExit(f"{name} did not start")
                time.sleep(0.05)
        warm = [upgrade(port) for _ in range(100)]
        drain(warm)
        time.sleep(settle)
        before = rss(p.pid)
        socks = []
        for i in range(n):
            socks.append(upgrade(port))
            if (i + 1) % 1000 == 0:
                print(f"\r  {name}: {i + 1}/{n} clients", end="", file=sys.stderr, flush=True)
        got = drain(socks + warm)
        time.sleep(settle)
        after = rss(p.pid)
        print(f"\r  {name}: {n} clients, read {got} B, RSS {before / 1e6:.1f} -> "
              f"{after / 1e6:.1f} MB: {(after - before) / n:.0f} B/client", file=sys.stderr)
        for s in socks + warm:
            s.close()
        return {"before": before, "after": after, "per_client": (after - before) / n,
                "bytes_read": got}
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--settle", type=float, default=2.5, help="seconds to sit before each RSS read")
    ap.add_argument("--only", help="comma-separated server names")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--before", help="an earlier iocp binary: adds the row iocp-uring-before")
    a = ap.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    table = servers(a.before)
    names = a.only.split(",") if a.only else list(table)
    for n in names:
        if not os.path.exists(table[n][0][0]):
            raise SystemExit(f"{table[n][0][0]} is missing: build it first (bench/compare-chat.sh does)")
    results = {n: [] for n in names}
    for rep in range(a.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        print(f"rep {rep + 1}/{a.reps}: {', '.join(order)}", file=sys.stderr)
        for n in order:
            cmd, flag = table[n]
            results[n].append(run(n, cmd, flag, a.clients, a.settle))
    base = statistics.median(r["per_client"] for r in results["tokio"]) if "tokio" in results else None
    print(f"\n{a.clients} idle WebSocket clients, median of {a.reps}\n")
    print("| server | RSS growth per client | reps | x tokio |")
    print("|---|---:|---|---:|")
    for n in names:
        v = [r["per_client"] for r in results[n]]
        m = statistics.median(v)
        rel = f"{m / base:.2f}x" if base else "-"
        print(f"| {n} | {m:,.0f} B | {', '.join(f'{x:,.0f}' for x in v)} | {rel} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"clients": a.clients, "reps": a.reps, "settle": a.settle,
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

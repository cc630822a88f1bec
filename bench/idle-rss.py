#!/usr/bin/env python3
"""RSS per idle connection of `iocp serve echo --park-after 0` (issue 12; `--park-after S` for
another setting, e.g. the default 1).

Each run starts a fresh server (2 workers), warms it with 200 connections that echo once and
close, reads its RSS, then opens N connections that each echo 64 B once and stay open, waits
1.5 s and reads the RSS again: the growth divided by N is the figure. The client is this
Python process (blocking sockets, not our engine).

Usage:
  bench/idle-rss.py BIN uring|epoll N                    one run, one line
  bench/idle-rss.py --bin NAME=BIN [--bin NAME=BIN ...] [--reps 3] [--counts 10000,19000]
                    [--backends uring,epoll] [--park-after 0] [--json FILE]
                                                          interleaved reps, a median table
"""
import argparse, json, random, re, resource, socket, statistics, subprocess, sys, time

resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))


PARK_AFTER = "0"


def run(bin_, backend, n):
    port = random.randint(20000, 32000)  # below the ephemeral range (32768-60999)
    p = subprocess.Popen(
        [bin_, "serve", "echo", "--backend", backend, "--addr", f"127.0.0.1:{port}",
         "--park-after", PARK_AFTER, "--threads", "2", "--max-connections", "20000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def rss():
            status = open(f"/proc/{p.pid}/status").read()
            return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024

        end = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > end or p.poll() is not None:
                    raise RuntimeError(f"{bin_} did not start on port {port}")
                time.sleep(0.05)

        def round_(k):
            cs = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(k)]
            for s in cs:
                s.sendall(b"x" * 64)
            for s in cs:
                got = b""
                deadline = time.time() + 10
                while len(got) < 64:
                    chunk = s.recv(64 - len(got))
                    if not chunk or time.time() > deadline:
                        raise RuntimeError("echo lost")
                    got += chunk
            return cs

        for s in round_(200):
            s.close()
        time.sleep(1.5)
        base = rss()
        cs = round_(n)
        time.sleep(1.5)
        held = rss()
        for s in cs:
            s.close()
        return (held - base) / n
    finally:
        p.terminate()
        p.wait(timeout=30)


def main():
    if len(sys.argv) == 4 and not sys.argv[1].startswith("-"):
        bin_, backend, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        print(f"{bin_} {backend} {n}: {run(bin_, backend, n):.0f} B/conn")
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bin", action="append", required=True, help="NAME=PATH of an iocp binary")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--counts", default="10000,19000")
    ap.add_argument("--backends", default="uring,epoll")
    ap.add_argument("--park-after", default="0", help="the server's --park-after, seconds")
    ap.add_argument("--json")
    a = ap.parse_args()
    global PARK_AFTER
    PARK_AFTER = a.park_after
    bins = [b.split("=", 1) for b in a.bin]
    counts = [int(c) for c in a.counts.split(",")]
    backends = a.backends.split(",")
    cases = [(b, n) for n in counts for b in backends]
    results = {f"{name} {b} {n}": [] for name, _ in bins for b, n in cases}
    total, done = a.reps * len(cases) * len(bins), 0
    for rep in range(a.reps):
        for b, n in cases:
            for name, path in bins:  # interleaved: every binary once per rep and case
                v = run(path, b, n)
                results[f"{name} {b} {n}"].append(v)
                done += 1
                print(f"[{done}/{total}] rep {rep + 1} {name} {b} {n}: {v:.0f} B/conn",
                      file=sys.stderr, flush=True)
    print(f"\n| backend | connections | " + " | ".join(f"{name} (median B/conn)" for name, _ in bins)
          + " | runs |")
    print("|---|---:|" + "---:|" * len(bins) + "---|")
    for b, n in cases:
        meds = [statistics.median(results[f"{name} {b} {n}"]) for name, _ in bins]
        runs = "; ".join(
            f"{name}: " + ", ".join(f"{v:.0f}" for v in results[f"{name} {b} {n}"]) for name, _ in bins)
        print(f"| {b} | {n:,} | " + " | ".join(f"{m:.0f}" for m in meds) + f" | {runs} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "bins": dict(bins), "reps": a.reps,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Runs the echo or HTTP comparison behind bench/compare-echo.sh and bench/compare-http.sh.

Called by those scripts after they have built everything; run them, not this file. The
`metrics` mode (bench/metrics-cost.sh) measures `iocp serve echo` against itself: without
`--metrics` twice (the second instance is the noise floor) and with `--metrics` scraped once a
second, on each backend. For each
case and each repetition it starts every server in turn (round-robin, the order rotated every
repetition, so a slow minute and a position in the round hit all servers alike), loads it,
stops it, and records throughput, p99 latency and the server's CPU time per message or request
(utime + stime from /proc/PID/stat, over the measured window). The load generator runs as many
threads as the server (echo: `iocp bench echo --threads N` on its own epoll engine, one epoll
loop per thread, which does not use the iocp library; HTTP: `wrk -tN`); the baseline (tokio,
nginx) runs twice, the second instance showing the noise floor; at least 3 repetitions, medians.
The echo comparison ends with a scale row: many connections opened as fast as they go, a few of
them active, reporting connect time, the server's RSS per connection and the active ones'
msgs/s. Then it prints medians and ratios, writes every raw number as JSON under bench/results/,
and with --write replaces the marked sections of BENCHMARKS.md.

Every server runs in its own process group and is killed on exit, on error and on
SIGINT/SIGTERM; every wait has a deadline.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IOCP = os.path.join(ROOT, "target", "release", "iocp")
# The binary whose `serve echo|http` is measured: this tree's, unless IOCP_SERVE_BIN names
# another build (e.g. to measure two versions of the server with the same generator).
IOCP_SERVE = os.environ.get("IOCP_SERVE_BIN") or IOCP
# A second build of `iocp serve` (e.g. the commit before a restructure), measured beside this
# tree's as iocp-uring@base and iocp-epoll@base: a before/after with the same generator.
IOCP_BASE = os.environ.get("IOCP_BASE_BIN")
PEERS = os.path.join(ROOT, "bench", "peers", "target", "release")
C_PEERS = os.path.join(ROOT, "bench", "peers", "target", "c")
LIBIOCP_ECHO = os.path.join(ROOT, "bench", "peers", "target", "c", "libiocp_echo")
HZ = os.sysconf("SC_CLK_TCK")

RUNNING = []  # Popen objects of servers still up
# The calling script's backstop: the process groups of running servers, one per line, which its
# EXIT trap kills should this process die without cleaning up (SIGKILL).
PIDFILE = os.environ.get("COMPARE_PIDFILE")


def note_running():
    if PIDFILE:
        with open(PIDFILE, "w") as f:
            f.writelines(f"{p.pid}\n" for p in RUNNING)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def kill_all():
    for p in list(RUNNING):
        stop(p)


def on_signal(signum, _frame):
    kill_all()
    log(f"compare: stopped by signal {signum}; servers killed")
    sys.exit(130)


def stop(p, grace=3.0):
    """SIGTERM the server's process group, SIGKILL it after `grace` seconds."""
    if p in RUNNING:
        RUNNING.remove(p)
        note_running()
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=5)


def wait_port(port, proc, deadline_s=10.0):
    """True once something accepts on 127.0.0.1:port; False if `proc` died or time ran out."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def cpu_seconds(pids):
    """utime + stime of each pid in `pids`, summed (all threads); gone processes count 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            total += int(rest[11]) + int(rest[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / HZ


def children(pid):
    """Direct children of `pid` (nginx workers of the master)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            if int(rest[1]) == pid:
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


def start(argv, port, name, logdir):
    logf = open(os.path.join(logdir, f"{name}.log"), "ab")
    p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    RUNNING.append(p)
    note_running()
    if not wait_port(port, p):
        stop(p)
        raise RuntimeError(f"{name} did not start listening on port {port} "
                           f"(log: {logdir}/{name}.log)")
    return p


def iocp_has(subcommand):
    """Whether the iocp binary to measure has `serve <subcommand>`."""
    if not os.access(IOCP_SERVE, os.X_OK):
        return False
    r = subprocess.run([IOCP_SERVE, "serve", subcommand, "--help"], capture_output=True,
                       timeout=10)
    return r.returncode == 0


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=0, unit=""):
    if x is None:
        return "–"
    if digits == 0:
        return f"{x:,.0f}{unit}"
    return f"{x:,.{digits}f}{unit}"


def git_commit():
    try:
        r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return r.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine():
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }


# ---------------------------------------------------------------------------------------------
# echo


def echo_servers(threads, args):
    """(name, argv-maker) for every echo server whose binary exists; prints what is skipped."""
    servers = []
    have_serve = iocp_has("echo")
    for backend in ("uring", "epoll"):
        name = f"iocp-{backend}"
        if have_serve:
            # --max-connections above the scale row's count (the default is 10,000)
            servers.append((name, lambda a, b=backend: [IOCP_SERVE, "serve", "echo", "--addr", a,
                                                        "--threads", str(threads), "--backend", b,
                                                        "--max-connections", "1000000"]))
        else:
            log(f"compare: SKIP {name}: {IOCP_SERVE} has no `serve echo` yet")
        if IOCP_BASE:
            servers.append((f"{name}@base",
                            lambda a, b=backend: [IOCP_BASE, "serve", "echo", "--addr", a,
                                                  "--threads", str(threads), "--backend", b,
                                                  "--max-connections", "1000000"]))
    peers = [
        ("tokio", os.path.join(PEERS, "tokio-echo")),
        ("monoio", os.path.join(PEERS, "monoio-echo")),
        ("c-epoll", os.path.join(C_PEERS, "epoll_echo")),
        ("c-uring", os.path.join(C_PEERS, "uring_echo")),
        ("libiocp-c", LIBIOCP_ECHO),
    ]
    for name, path in peers:
        if os.access(path, os.X_OK) and name == "libiocp-c":
            # The Windows-style example takes --addr IP --port P.
            servers.append((name, lambda a, p=path: [p, "--addr", a.rsplit(":", 1)[0], "--port",
                                                     a.rsplit(":", 1)[1], "--threads", str(threads)]))
        elif os.access(path, os.X_OK):
            servers.append((name, lambda a, p=path: [p, "--addr", a, "--threads", str(threads)]))
        else:
            log(f"compare: SKIP {name}: no binary at {os.path.relpath(path, ROOT)}")
    if args.servers:
        keep = args.servers.split(",")
        unknown = [k for k in keep if k not in [n for n, _ in servers]]
        if unknown:
            raise RuntimeError(f"--servers: no server named {', '.join(unknown)} here "
                               f"(have: {', '.join(n for n, _ in servers)})")
        servers = [(n, m) for n, m in servers if n in keep]
    names = [n for n, _ in servers]
    twice = args.noise_peer if args.noise_peer in names else (names[0] if names else None)
    if twice:
        maker = dict(servers)[twice]
        servers.append((f"{twice}#2", maker))
    return servers


def echo_cmd(addr, conns, size, args, pid):
    """The `iocp bench echo --json` run against the server at `addr` (process `pid`)."""
    return [IOCP, "bench", "echo", "--addr", addr, "-c", str(conns), "-s", str(size),
            "-d", f"{args.duration}s", "--warmup", f"{args.warmup}s",
            "--threads", str(args.gen_threads), "--engine", "epoll",
            "--server-pid", str(pid), "--json"]


def bench_echo(cmd, limit, name):
    """Runs one `iocp bench echo --json`; its result dict (with "exit"), or {"failed": why}."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as e:
        return {"failed": f"timed out: {e}"}
    lines = r.stdout.strip().splitlines()
    if not lines:
        # exit 2: no connection could be made (or bad arguments); the reason is on stderr
        why = r.stderr.strip() or f"exit {r.returncode}, no output"
        log(f"compare: bench against {name} failed: {why}")
        return {"failed": why, "exit": r.returncode}
    try:
        res = json.loads(lines[-1])
    except ValueError as e:
        return {"failed": f"not JSON ({e}): {lines[-1][:200]}"}
    res["exit"] = r.returncode
    if r.returncode != 0:
        log(f"  exit {r.returncode}, errors {res.get('errors')}: {r.stderr.strip()}")
    return res


def rotated(xs, k):
    """`xs` rotated left by `k` (the server order of repetition `k`)."""
    k %= max(1, len(xs))
    return xs[k:] + xs[:k]


def run_echo(args, logdir):
    cases = [(50, 64), (50, 4096), (1000, 64)]
    if args.cases:
        cases = [tuple(int(x) for x in c.split("x")) for c in args.cases.split(",")]
    servers = echo_servers(args.server_threads, args)
    if not servers:
        raise RuntimeError("no server to measure")
    est = args.reps * len(cases) * len(servers) * (args.duration + args.warmup + 1)
    log(f"compare: {args.reps} x {len(cases)} cases x {len(servers)} servers, about {est:.0f} s")
    runs = []
    port = args.port
    total = args.reps * len(cases) * len(servers)
    n = 0
    for rep in range(args.reps):
        for conns, size in cases:
            for name, maker in rotated(servers, rep):
                n += 1
                port += 1
                addr = f"127.0.0.1:{port}"
                log(f"[{n}/{total}] rep {rep + 1} {conns}x{size}B {name}")
                try:
                    p = start(maker(addr), port, name.replace("#", "_"), logdir)
                except RuntimeError as e:
                    log(f"compare: {e}")
                    runs.append({"server": name, "rep": rep, "conns": conns, "size": size,
                                 "failed": str(e)})
                    continue
                try:
                    cmd = echo_cmd(addr, conns, size, args, p.pid)
                    res = bench_echo(cmd, args.duration + args.warmup + 30, name)
                    res.update({"server": name, "rep": rep, "conns": conns, "size": size})
                    if "failed" not in res:
                        log(f"  {fmt(res.get('rate'))} msgs/s  p99 {fmt(res['latency_us']['p99'])} µs"
                            f"  server {fmt(res.get('server_cpu_us_per_msg'), 2)} µs/msg"
                            f"  generator {fmt(res.get('gen_cpu_us_per_msg'), 2)} µs/msg")
                    runs.append(res)
                finally:
                    stop(p)
    return summarize(runs, [(f"{c}x{s}B", c, s) for c, s in cases], [n for n, _ in servers],
                     key=lambda r: (r["conns"], r["size"]), ckey=lambda c: (c[1], c[2]),
                     rate="rate", cpu="server_cpu_us_per_msg", unit="msgs/s",
                     base=args.noise_peer if args.servers else "tokio"), runs


def run_scale(args, logdir):
    """The scale row: `args.scale` = CONNSxACTIVE connections opened with --ramp, ACTIVE of them
    sending 64 B messages, the rest idle; per server the connect time, RSS per connection and
    the active connections' msgs/s. Interleaved like the other cases."""
    conns, active = (int(x) for x in args.scale.split("x"))
    servers = echo_servers(args.server_threads, args)
    runs = []
    port = args.port + 5000
    total = args.reps * len(servers)
    n = 0
    for rep in range(args.reps):
        for name, maker in rotated(servers, rep):
            n += 1
            port += 1
            addr = f"127.0.0.1:{port}"
            log(f"[scale {n}/{total}] rep {rep + 1} {conns} connections, {active} active, {name}")
            base = {"server": name, "rep": rep, "conns": conns, "active": active}
            try:
                p = start(maker(addr), port, name.replace("#", "_") + "_scale", logdir)
            except RuntimeError as e:
                log(f"compare: {e}")
                runs.append({**base, "failed": str(e)})
                continue
            try:
                cmd = [IOCP, "bench", "echo", "--addr", addr, "-c", str(conns), "--active",
                       str(active), "--ramp", "-s", "64", "-d", f"{args.duration}s", "--warmup",
                       f"{args.warmup}s", "--threads", str(args.gen_threads), "--engine", "epoll",
                       "--server-pid", str(p.pid), "--json"]
                res = bench_echo(cmd, args.duration + args.warmup + 120, name)
                res.update(base)
                if "failed" not in res:
                    log(f"  connected {res.get('connected')} in {fmt(res.get('connect_s'), 2)} s"
                        f" (p99 {fmt(res.get('connect_us', {}).get('p99'))} µs)"
                        f"  RSS {fmt(res.get('server_rss_per_conn'))} B/conn"
                        f"  {fmt(res.get('rate'))} msgs/s"
                        f"  server {fmt(res.get('server_cpu_us_per_msg'), 2)} µs/msg")
                runs.append(res)
            finally:
                stop(p)
    rows = []
    for s in [n for n, _ in servers]:
        rs = [r for r in runs if r["server"] == s and "failed" not in r]
        if not rs:
            rows.append({"server": s, "n": 0})
            continue
        rows.append({
            "server": s, "n": len(rs),
            "connected": min(r.get("connected") or 0 for r in rs),
            "connect_s": median([r.get("connect_s") for r in rs]),
            "connect_p99_us": median([(r.get("connect_us") or {}).get("p99") for r in rs]),
            "connect_max_us": median([(r.get("connect_us") or {}).get("max") for r in rs]),
            "rss_per_conn": median([r.get("server_rss_per_conn") for r in rs]),
            "rate": median([r.get("rate") for r in rs]),
            "server_cpu_us": median([r.get("server_cpu_us_per_msg") for r in rs]),
            "p99_us": median([(r.get("latency_us") or {}).get("p99") for r in rs]),
            "errors": sum(r.get("errors") or 0 for r in rs),
        })
    return {"conns": conns, "active": active, "rows": rows}, runs


def scale_markdown(scale):
    head = ["server", "connected", "connect s (median)", "connect p99 µs", "connect max µs",
            "server RSS B/conn",
            f"msgs/s of {scale['active']} active", "server CPU µs/msg", "p99 µs", "errors"]
    lines = [f"Scale: {scale['conns']} connections opened with `--ramp`, {scale['active']} of "
             f"them active (64 B ping-pong), the rest idle.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in scale["rows"]:
        if not r["n"]:
            cells = [r["server"], "no run"] + [""] * (len(head) - 2)
        else:
            cells = [r["server"], f"{r['connected']:,}", fmt(r["connect_s"], 2),
                     fmt(r["connect_p99_us"]), fmt(r["connect_max_us"]), fmt(r["rss_per_conn"]),
                     fmt(r["rate"]),
                     fmt(r["server_cpu_us"], 2), fmt(r["p99_us"]), str(r["errors"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# http

# As nginx runs in production: one worker per server thread, each with its own accept queue
# (`reuseport`), sendfile + tcp_nopush, no access log, keep-alive connections kept for good.
NGINX_CONF = """\
worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    types {{ application/octet-stream bin; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        root {root};
    }}
}}
"""


def http_servers(args, tmp, docroot):
    servers = []
    if iocp_has("http"):
        servers.append(("iocp", lambda port: ([IOCP_SERVE, "serve", "http", "--root", docroot, "--addr",
                                                f"127.0.0.1:{port}", "--threads",
                                                str(args.server_threads)], False)))
    else:
        log(f"compare: SKIP iocp: {IOCP_SERVE} has no `serve http` yet")
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)
                                      else None)
    if nginx:
        def nginx_argv(port):
            prefix = tempfile.mkdtemp(prefix="nginx-", dir=tmp)
            os.makedirs(os.path.join(prefix, "tmp"))
            user = "user root;" if os.geteuid() == 0 else ""
            with open(os.path.join(prefix, "nginx.conf"), "w") as f:
                f.write(NGINX_CONF.format(prefix=prefix, port=port, root=docroot, user=user,
                                          workers=args.server_threads))
            return ([nginx, "-p", prefix, "-e", os.path.join(prefix, "error.log"), "-c",
                     os.path.join(prefix, "nginx.conf")], True)
        servers.append(("nginx", nginx_argv))
        servers.append(("nginx#2", nginx_argv))
    else:
        log("compare: SKIP nginx: not installed")
    return servers


WRK_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}
SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}


def parse_wrk(out):
    res = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rate"] = float(m.group(1))
    m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    if m:
        res["mb_per_s"] = float(m.group(1)) * SIZE_UNITS.get(m.group(2), 1) / 1e6
    m = re.search(r"^\s+99%\s+([\d.]+)(\w+)", out, re.M)
    if m:
        res["p99_us"] = float(m.group(1)) * WRK_UNITS.get(m.group(2), 1)
    m = re.search(r"^\s+50%\s+([\d.]+)(\w+)", out, re.M)
    if m:
        res["p50_us"] = float(m.group(1)) * WRK_UNITS.get(m.group(2), 1)
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    res["errors"] = errors
    return res


def run_http(args, logdir):
    wrk = shutil.which("wrk")
    if not wrk:
        raise RuntimeError("wrk is not installed (compare-http.sh installs it with apt-get)")
    tmp = tempfile.mkdtemp(prefix="iocp-compare-http-")
    docroot = os.path.join(tmp, "www")
    os.makedirs(docroot)
    os.chmod(tmp, 0o755)
    files = [("1KiB", 1024), ("64KiB", 64 * 1024), ("1MiB", 1024 * 1024)]
    for name, size in files:
        with open(os.path.join(docroot, f"{name}.bin"), "wb") as f:
            f.write(os.urandom(size))
        os.chmod(os.path.join(docroot, f"{name}.bin"), 0o644)
    os.chmod(docroot, 0o755)
    servers = http_servers(args, tmp, docroot)
    if not servers:
        raise RuntimeError("no server to measure")
    est = args.reps * len(files) * len(servers) * (args.duration + max(1, int(args.warmup)) + 1)
    log(f"compare: {args.reps} x {len(files)} files x {len(servers)} servers, about {est:.0f} s")
    runs = []
    port = args.port
    total = args.reps * len(files) * len(servers)
    n = 0
    try:
        for rep in range(args.reps):
            for fname, size in files:
                for name, maker in rotated(servers, rep):
                    n += 1
                    port += 1
                    log(f"[{n}/{total}] rep {rep + 1} {fname} {name}")
                    argv, has_workers = maker(port)
                    try:
                        p = start(argv, port, name.replace("#", "_"), logdir)
                    except RuntimeError as e:
                        log(f"compare: {e}")
                        runs.append({"server": name, "rep": rep, "file": fname, "failed": str(e)})
                        continue
                    try:
                        url = f"http://127.0.0.1:{port}/{fname}.bin"
                        # a short unmeasured warm-up, then the measured run
                        subprocess.run([wrk, f"-t{args.server_threads}", "-c100",
                                        f"-d{max(1, int(args.warmup))}s", url],
                                       capture_output=True, timeout=args.warmup + 30)
                        # after the warm-up: nginx's master listens before it forks the workers
                        pids = [p.pid] + (children(p.pid) if has_workers else [])
                        cpu0 = cpu_seconds(pids)
                        r = subprocess.run([wrk, f"-t{args.server_threads}", "-c100",
                                            f"-d{args.duration}s", "--latency", url],
                                           capture_output=True, text=True,
                                           timeout=args.duration + 30)
                        cpu1 = cpu_seconds(pids)
                        res = parse_wrk(r.stdout)
                        res.update({"server": name, "rep": rep, "file": fname, "size": size,
                                    "exit": r.returncode, "server_pids": len(pids)})
                        if res.get("requests"):
                            res["server_cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / res["requests"]
                        log(f"  {fmt(res.get('rate'))} req/s  {fmt(res.get('mb_per_s'), 1)} MB/s"
                            f"  p99 {fmt(res.get('p99_us'))} µs"
                            f"  server {fmt(res.get('server_cpu_us_per_req'), 2)} µs/req"
                            f"  errors {res['errors']}")
                        runs.append(res)
                    except subprocess.TimeoutExpired as e:
                        log(f"compare: wrk against {name} failed: {e}")
                        runs.append({"server": name, "rep": rep, "file": fname, "failed": str(e)})
                    finally:
                        stop(p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summarize(runs, [(f, f, s) for f, s in files], [n for n, _ in servers],
                     key=lambda r: r["file"], ckey=lambda c: c[1], rate="rate",
                     cpu="server_cpu_us_per_req", unit="req/s", base="nginx"), runs


# ---------------------------------------------------------------------------------------------
# statistics and output


# ---------------------------------------------------------------------------------------------
# the cost of --metrics


METRIC_MODES = ["plain", "plain#2", "metrics"]


def scrape_every_second(url, stop_evt, out):
    """GETs `url` once a second until `stop_evt`; counts successes and failures into `out`."""
    import urllib.request
    while not stop_evt.wait(1.0):
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                body = r.read()
            out["scrapes"] += 1
            out["bytes"] = len(body)
        except OSError:
            out["scrape_failures"] += 1


def run_metrics(args, logdir):
    import threading
    if not iocp_has("echo"):
        raise RuntimeError(f"{IOCP_SERVE} has no `serve echo`")
    backends = ["uring", "epoll"]
    conns, size = 50, 64
    total = args.reps * len(backends) * len(METRIC_MODES)
    est = total * (args.duration + args.warmup + 1.5)
    log(f"metrics-cost: {args.reps} x {len(backends)} backends x {len(METRIC_MODES)} modes, "
        f"about {est:.0f} s")
    runs = []
    port = args.port
    n = 0
    for rep in range(args.reps):
        for backend in backends:
            for mode in rotated(METRIC_MODES, rep):
                n += 1
                port += 2
                addr, maddr = f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"
                argv = [IOCP_SERVE, "serve", "echo", "--addr", addr, "--threads",
                        str(args.server_threads), "--backend", backend]
                if mode == "metrics":
                    argv += ["--metrics", maddr]
                name = f"{backend}-{mode}"
                log(f"[{n}/{total}] rep {rep + 1} {backend} {mode}")
                row = {"server": mode, "backend": backend, "rep": rep, "conns": conns, "size": size}
                try:
                    p = start(argv, port, name.replace("#", "_"), logdir)
                except RuntimeError as e:
                    log(f"metrics-cost: {e}")
                    runs.append({**row, "failed": str(e)})
                    continue
                stop_evt = threading.Event()
                scraped = {"scrapes": 0, "scrape_failures": 0, "bytes": 0}
                scraper = None
                if mode == "metrics":
                    scraper = threading.Thread(target=scrape_every_second,
                                               args=(f"http://{maddr}/metrics", stop_evt, scraped),
                                               daemon=True)
                    scraper.start()
                try:
                    cmd = echo_cmd(addr, conns, size, args, p.pid)
                    res = bench_echo(cmd, args.duration + args.warmup + 30, name)
                    stop_evt.set()
                    if scraper:
                        scraper.join(timeout=5)
                        res.update(scraped)
                    res.update(row)
                    if "failed" not in res:
                        extra = (f"  {scraped['scrapes']} scrapes ({scraped['bytes']} B)"
                                 if scraper else "")
                        log(f"  {fmt(res.get('rate'))} msgs/s  server "
                            f"{fmt(res.get('server_cpu_us_per_msg'), 3)} µs/msg{extra}")
                    runs.append(res)
                finally:
                    stop_evt.set()
                    stop(p)
    rows = []
    for backend in backends:
        ok = [r for r in runs if "failed" not in r and r["backend"] == backend]
        base_rate = {r["rep"]: r.get("rate") for r in ok if r["server"] == "plain"}
        base_cpu = {r["rep"]: r.get("server_cpu_us_per_msg") for r in ok if r["server"] == "plain"}
        for mode in METRIC_MODES:
            rs = [r for r in ok if r["server"] == mode]
            if not rs:
                rows.append({"backend": backend, "mode": mode, "n": 0})
                continue
            rate_ratio = [r["rate"] / base_rate[r["rep"]] for r in rs
                          if r.get("rate") and base_rate.get(r["rep"])]
            cpu_ratio = [r["server_cpu_us_per_msg"] / base_cpu[r["rep"]] for r in rs
                         if r.get("server_cpu_us_per_msg") and base_cpu.get(r["rep"])]
            rows.append({
                "backend": backend, "mode": mode, "n": len(rs),
                "rates": [r.get("rate") for r in sorted(rs, key=lambda r: r["rep"])],
                "rate": median([r.get("rate") for r in rs]),
                "rate_ratio": median(rate_ratio),
                "server_cpu_us": median([r.get("server_cpu_us_per_msg") for r in rs]),
                "cpu_ratio": median(cpu_ratio),
                "scrapes": sum(r.get("scrapes") or 0 for r in rs),
                "scrape_failures": sum(r.get("scrape_failures") or 0 for r in rs),
                "errors": sum(r.get("errors") or 0 for r in rs),
            })
    return {"unit": "msgs/s", "base": "plain", "rows": rows}, runs


def metrics_markdown(summary):
    head = ["backend", "server", "msgs/s per rep", "median", "× plain", "server CPU µs/msg",
            "CPU × plain", "scrapes (failed)", "errors"]
    label = {"plain": "without `--metrics`", "plain#2": "without, 2nd instance (noise floor)",
             "metrics": "with `--metrics`, scraped 1/s"}
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        if not r["n"]:
            lines.append(f"| {r['backend']} | {label[r['mode']]} | no run |||||||")
            continue
        scrapes = f"{r['scrapes']} ({r['scrape_failures']})" if r["mode"] == "metrics" else "–"
        lines.append("| " + " | ".join([
            r["backend"], label[r["mode"]], " / ".join(fmt(x) for x in r["rates"]),
            fmt(r["rate"]), fmt(r["rate_ratio"], 3, "×"), fmt(r["server_cpu_us"], 3),
            fmt(r["cpu_ratio"], 3, "×"), scrapes, str(r["errors"])]) + " |")
    return "\n".join(lines) + "\n"


def summarize(runs, cases, servers, key, ckey, rate, cpu, unit, base="tokio"):
    """Median per (case, server) and the median of per-repetition ratios against `base`."""
    rows = []
    for label, *rest in cases:
        c = ckey((label, *rest))
        case_runs = [r for r in runs if "failed" not in r and key(r) == c]
        by_rep_base = {r["rep"]: r.get(rate) for r in case_runs if r["server"] == base}
        for s in servers:
            rs = [r for r in case_runs if r["server"] == s]
            if not rs:
                rows.append({"case": label, "server": s, "n": 0})
                continue
            ratios = [r[rate] / by_rep_base[r["rep"]] for r in rs
                      if r.get(rate) and by_rep_base.get(r["rep"])]
            p99 = [r["latency_us"]["p99"] if "latency_us" in r else r.get("p99_us") for r in rs]
            rows.append({
                "case": label, "server": s, "n": len(rs),
                "rate": median([r.get(rate) for r in rs]),
                "rate_min": min((r.get(rate) or 0) for r in rs),
                "rate_max": max((r.get(rate) or 0) for r in rs),
                "ratio": median(ratios),
                "p99_us": median(p99),
                "mb_per_s": median([r.get("mb_per_s") for r in rs]),
                "server_cpu_us": median([r.get(cpu) for r in rs]),
                "gen_cpu_us": median([r.get("gen_cpu_us_per_msg") for r in rs]),
                "errors": sum(r.get("errors") or 0 for r in rs),
            })
    return {"unit": unit, "base": base, "rows": rows}


def markdown(summary, what):
    unit, base = summary["unit"], summary["base"]
    per = "msg" if what == "echo" else "req"
    head = [
        "case", "server", f"{unit} (median)", "min–max", f"× {base}", "p99 µs", "MB/s",
        f"server CPU µs/{per}",
    ]
    if what == "echo":
        head.append(f"generator CPU µs/{per}")
    head.append("errors")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        if not r["n"]:
            cells = [r["case"], r["server"], "no run"] + [""] * (len(head) - 3)
        else:
            cells = [
                r["case"], r["server"], fmt(r["rate"]),
                f"{fmt(r['rate_min'])}–{fmt(r['rate_max'])}",
                fmt(r["ratio"], 2, "×"), fmt(r["p99_us"]), fmt(r["mb_per_s"], 1),
                fmt(r["server_cpu_us"], 2),
            ]
            if what == "echo":
                cells.append(fmt(r["gen_cpu_us"], 2))
            cells.append(str(r["errors"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_section(path, marker, body):
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        post = rest.split(end, 1)[1]
        text = pre + block + post
    else:
        title = "Echo servers compared" if marker == "echo-compare" else "HTTP servers compared"
        text = text.rstrip("\n") + f"\n\n## {title}\n\n{block}\n"
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["echo", "http", "metrics"])
    ap.add_argument("--quick", action="store_true", help="1 repetition, 2 s per run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--server-threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--gen-threads", type=int, default=None,
                    help="iocp bench echo --threads (default: --server-threads)")
    ap.add_argument("--noise-peer", default="tokio", help="the server measured twice")
    ap.add_argument("--cases", default=None, help="echo cases, e.g. 50x64,1000x64")
    ap.add_argument("--scale", default=None,
                    help="echo scale row CONNSxACTIVE, or 'off' (default 19000x1000; --quick: "
                         "2000x200)")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--servers", default=None,
                    help="echo: only these servers, e.g. iocp-uring,iocp-uring@base (the @base "
                         "ones need IOCP_BASE_BIN)")
    ap.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = ap.parse_args()
    if args.quick:
        args.reps = 1
        args.warmup = min(args.warmup, 0.5)
    elif args.reps < 3:
        ap.error("--reps must be at least 3 for a comparison (medians of interleaved runs); "
                 "--quick is the smoke test")
    if args.scale is None:
        args.scale = "2000x200" if args.quick else "19000x1000"
    if args.gen_threads is None:
        args.gen_threads = args.server_threads
    if args.scale != "off" and not re.fullmatch(r"\d+x\d+", args.scale):
        ap.error(f"--scale takes CONNSxACTIVE or off, not {args.scale!r}")
    if args.duration is None:
        args.duration = 2 if args.quick else (10 if args.what == "http" else 5)
    if args.what == "http":
        args.duration = max(1, int(round(args.duration)))  # wrk takes whole seconds
    if args.port is None:
        args.port = {"echo": 17000, "http": 18000, "metrics": 19000}[args.what]
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    outdir = os.path.join(ROOT, "bench", "results", "quick" if args.quick else "")
    os.makedirs(outdir, exist_ok=True)
    logdir = tempfile.mkdtemp(prefix=f"iocp-compare-{args.what}-logs-")
    started = time.monotonic()
    info = {"what": args.what, "date": stamp, "commit": git_commit(), "machine": machine(),
            "reps": args.reps, "duration_s": args.duration, "warmup_s": args.warmup,
            "server_threads": args.server_threads, "iocp_serve_bin": IOCP_SERVE}
    try:
        scale = None
        if args.what == "metrics":
            summary, runs = run_metrics(args, logdir)
        elif args.what == "echo":
            summary, runs = run_echo(args, logdir)
            if args.scale != "off":
                scale, scale_runs = run_scale(args, logdir)
                runs += [{**r, "case": "scale"} for r in scale_runs]
        else:
            summary, runs = run_http(args, logdir)
    finally:
        kill_all()
    info["took_s"] = round(time.monotonic() - started, 1)
    info["machine_after"] = machine()
    out = os.path.join(outdir, f"{args.what}-{stamp}.json")
    with open(out, "w") as f:
        json.dump({"info": info, "summary": summary, "scale": scale, "runs": runs}, f, indent=1)
    table = metrics_markdown(summary) if args.what == "metrics" else markdown(summary, args.what)
    if scale:
        table += "\n" + scale_markdown(scale)
    print()
    print(table)
    m = info["machine"]
    how = (f"{args.reps} interleaved repetition(s) of {args.duration} s after {args.warmup} s "
           f"warm-up; `serve echo --threads {args.server_threads}` on each backend, the same "
           f"without `--metrics` twice (the second instance is the noise floor) and with "
           f"`--metrics` and /metrics fetched once a second; `iocp bench echo -c 50 -s 64 "
           f"--threads {args.gen_threads} --engine epoll`; medians, ratios = median of "
           f"per-repetition ratios against the first instance without; server CPU per message "
           f"from /proc over the window") if args.what == "metrics" else (
           f"{args.reps} interleaved repetition(s) of {args.duration} s after {args.warmup} s "
           f"warm-up; medians, ratios = median of per-repetition ratios against "
           f"{summary['base']}; servers with {args.server_threads} threads, the load generator "
           f"with {args.gen_threads if args.what == 'echo' else args.server_threads}; server CPU "
           f"per {'message' if args.what == 'echo' else 'request'} from /proc over the window")
    print(how)
    print(f"raw results: {os.path.relpath(out, ROOT)}; server logs: {logdir}; "
          f"took {info['took_s']} s")
    if args.write:
        script = {"echo": "compare-echo.sh", "http": "compare-http.sh",
                  "metrics": "metrics-cost.sh"}[args.what]
        body = (f"Measured {stamp[:8]} at commit `{info['commit']}` by `bench/{script}`"
                f"{' --quick' if args.quick else ''}: {how}. Machine: {m['cpus']} CPUs, kernel "
                f"{m['kernel']}, load average {' '.join(m['loadavg'])} at the start. Raw numbers: "
                f"`{os.path.relpath(out, ROOT)}`.\n\n{table}")
        marker = {"echo": "echo-compare", "http": "http-compare",
                  "metrics": "metrics-cost"}[args.what]
        write_section(os.path.join(ROOT, "BENCHMARKS.md"), marker, body)
        print(f"BENCHMARKS.md: section {marker} replaced")


if __name__ == "__main__":
    main()

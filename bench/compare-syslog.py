#!/usr/bin/env python3
"""Runs the syslog comparison behind bench/compare-syslog.sh: `iocp serve syslog` against rsyslog.

Called by that script after it has built iocp and checked for rsyslogd; run it, not this file.
Both collectors get the same inputs (TCP and UDP on loopback) and write text lines (the
original message) to a fresh directory under /tmp; both are driven by the same
`iocp bench syslog --json --check-dir DIR --server-pid PID` (std threads with blocking
sockets: not the iocp library), which counts every numbered message in the files afterwards.

The servers are iocp, rsyslog and a second rsyslog instance (`rsyslog#2`, the same
configuration: the noise floor). Cases, each repeated --reps times, the servers interleaved
(order rotated every repetition):
- tcp: --connections connections, --tcp-count messages flat out (LF framing, RFC 5424,
  120 B): msgs/s accepted and written, missing (must be 0), server CPU per message.
- udp@R: --udp-senders senders, --udp-count messages offered at R msgs/s in all (one value
  per --udp-rates entry): loss for both at the same offered load, server CPU per message.

rsyslog is configured for throughput as its documentation advises: imptcp (several threads),
imudp (threads, batchSize), a large LinkedList main queue with big dequeue batches, omfile
with asyncWriting, a large ioBufferSize, flushOnTXEnd off, no fsync; `-n -f CONF -i PIDFILE`
with its own work directory. Both get the same UDP receive buffer (4 MiB asked: iocp through
SO_RCVBUF capped by net.core.rmem_max, rsyslog with SO_RCVBUFFORCE as root).

Every server runs in its own process group and is killed on exit, on error and on
SIGINT/SIGTERM; every run is bounded in count and time. Raw results go to bench/results/.
"""

import argparse
import datetime
import json
import os
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
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
PIDFILE = os.environ.get("COMPARE_PIDFILE")
RCVBUF = "4m"

RSYSLOG_CONF = """
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imptcp" threads="{threads}")
module(load="imudp" threads="{threads}" batchSize="256")
main_queue(queue.type="LinkedList" queue.size="2000000" queue.dequeueBatchSize="4096"
           queue.workerThreads="1" queue.highWatermark="1800000" queue.lowWatermark="1000000")
template(name="raw" type="string" string="%rawmsg%\\n")
input(type="imptcp" address="127.0.0.1" port="{tcp}")
input(type="imudp" address="127.0.0.1" port="{udp}" rcvbufSize="{rcvbuf}")
action(type="omfile" file="{dir}/bench.log" template="raw" asyncWriting="on"
       ioBufferSize="1m" flushOnTXEnd="off" flushInterval="1" veryRobustZip="off")
"""

servers = []  # live Popen objects


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def kill_all():
    for p in servers:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    servers.clear()


def on_signal(sig, _frame):
    kill_all()
    sys.exit(128 + sig)


def wait_tcp(port, proc, limit=15.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {limit} s")


def start(name, out, tmp, threads):
    tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    errlog = open(os.path.join(tmp, f"{name.replace('#', '-')}.stderr"), "a")
    if name == "iocp":
        cmd = [IOCP, "serve", "syslog", "--tcp", f"127.0.0.1:{tcp}", "--udp", f"127.0.0.1:{udp}",
               "--dir", out, "--template", "bench.log", "--udp-rcvbuf", RCVBUF,
               "--threads", str(threads)]
        env = dict(os.environ, RUST_LOG="warn")
    else:
        # rsyslog, or its second instance (`rsyslog#2`, the noise floor): the same
        # configuration, its own work directory and pid file.
        tag = name.replace("#", "-")
        work = os.path.join(tmp, f"{tag}-work")
        os.makedirs(work, exist_ok=True)
        conf = os.path.join(tmp, f"{tag}.conf")
        with open(conf, "w") as f:
            f.write(RSYSLOG_CONF.format(work=work, threads=threads, tcp=tcp, udp=udp,
                                        rcvbuf=RCVBUF, dir=out))
        cmd = [RSYSLOGD, "-n", "-f", conf, "-i", os.path.join(tmp, f"{tag}.pid")]
        env = dict(os.environ)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog,
                            env=env, start_new_session=True)
    servers.append(proc)
    if PIDFILE:
        with open(PIDFILE, "a") as f:
            f.write(f"{proc.pid}\n")
    wait_tcp(tcp, proc)
    # UDP has no handshake: the TCP input is up, give the UDP one a moment more.
    time.sleep(0.3)
    return proc, tcp, udp


def stop(proc, limit=20.0):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc in servers:
        servers.remove(proc)


def one_run(name, case, args, tmp):
    out = os.path.join(tmp, f"out-{name.replace('#', '-')}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    proc, tcp, udp = start(name, out, tmp, args.server_threads)
    try:
        cmd = [IOCP, "bench", "syslog", "--json", "--check-dir", out, "--server-pid",
               str(proc.pid), "--settle", "2s", "--settle-max", "30s"]
        if case == "tcp":
            cmd += ["--tcp", f"127.0.0.1:{tcp}", "-c", str(args.connections),
                    "--count", str(args.tcp_count), "--duration", "120s"]
        else:
            rate = case.split("@")[1]
            cmd += ["--udp", f"127.0.0.1:{udp}", "--udp-senders", str(args.udp_senders),
                    "--count", str(args.udp_count), "--duration", "120s"]
            if rate != "max":
                cmd += ["--rate", rate]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        if r.returncode not in (0, 1) or not r.stdout.strip():
            raise RuntimeError(f"bench failed ({r.returncode}): {r.stderr.strip()}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res.pop("senders", None)
    finally:
        stop(proc)
        shutil.rmtree(out, ignore_errors=True)
    return res


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tcp-count", type=int, default=1_000_000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--udp-count", type=int, default=300_000)
    ap.add_argument("--udp-senders", type=int, default=2)
    ap.add_argument("--udp-rates", default="50000,150000")
    ap.add_argument("--server-threads", type=int, default=2)
    ap.add_argument("--servers", default="iocp,rsyslog,rsyslog#2",
                    help="rsyslog#2 is a second rsyslog instance: the noise floor")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    names = args.servers.split(",")
    cases = ["tcp"] + [f"udp@{r}" for r in args.udp_rates.split(",") if r]
    results = {c: {n: [] for n in names} for c in cases}
    tmp = tempfile.mkdtemp(prefix="iocp-syslogbench-", dir="/tmp")
    t0 = time.monotonic()
    try:
        for rep in range(args.reps):
            for case in cases:
                order = names[rep % len(names):] + names[:rep % len(names)]
                for name in order:
                    res = one_run(name, case, args, tmp)
                    results[case][name].append(res)
                    log(f"rep {rep + 1} {case:10} {name:8} sent {res['sent_per_s']:>9.0f}/s "
                        f"written {res.get('written_per_s') or 0:>9.0f}/s missing "
                        f"{res.get('missing')} cpu {res.get('server_cpu_us_per_msg')} us/msg")
    finally:
        kill_all()
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    for case in cases:
        for name in names:
            rs = results[case][name]
            rows.append({
                "case": case, "server": name,
                "sent_per_s": med([r["sent_per_s"] for r in rs]),
                "written_per_s": med([r.get("written_per_s") for r in rs]),
                "missing": [r.get("missing") for r in rs],
                "duplicated": sum(r.get("duplicated", 0) for r in rs),
                "out_of_order": sum(r.get("out_of_order", 0) for r in rs),
                "loss_pct": med([100.0 * r["missing"] / r["sent"] if r["sent"] else None
                                 for r in rs]),
                "server_cpu_us_per_msg": med([r.get("server_cpu_us_per_msg") for r in rs]),
            })
    lines = ["| case | server | msgs/s accepted | msgs/s written | missing per rep | loss "
             "(median) | server CPU per message (median) |",
             "|---|---|---:|---:|---|---:|---:|"]
    for r in rows:
        miss = ", ".join(str(m) for m in r["missing"])
        cpu = r["server_cpu_us_per_msg"]
        cpu = "-" if cpu is None else f"{cpu:.2f} µs"
        lines.append(f"| {r['case']} | {r['server']} | {r['sent_per_s']:,.0f} | "
                     f"{r['written_per_s'] or 0:,.0f} | {miss} | {r['loss_pct']:.2f} % | {cpu} |")
    for case in cases:
        by = {r["server"]: r for r in rows if r["case"] == case}
        if "iocp" in by and "rsyslog" in by and by["rsyslog"]["written_per_s"]:
            a, b = by["iocp"], by["rsyslog"]
            lines.append(f"\n{case}: iocp/rsyslog written msgs/s {a['written_per_s'] / b['written_per_s']:.2f}x, "
                         f"CPU per message {a['server_cpu_us_per_msg'] / b['server_cpu_us_per_msg']:.2f}x")
            c = by.get("rsyslog#2")
            if c and c["written_per_s"] and c["server_cpu_us_per_msg"]:
                lines.append(f"{case}: noise floor rsyslog#2/rsyslog written msgs/s "
                             f"{c['written_per_s'] / b['written_per_s']:.2f}x, CPU per message "
                             f"{c['server_cpu_us_per_msg'] / b['server_cpu_us_per_msg']:.2f}x")
    text = "\n".join(lines)
    print(text)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    path = os.path.join(ROOT, "bench", "results", f"syslog-{stamp}.json")
    with open(path, "w") as f:
        json.dump({"args": vars(args), "label": args.label, "rows": rows, "raw": results,
                   "seconds": time.monotonic() - t0,
                   "load": os.getloadavg()}, f, indent=1)
    log(f"raw results: {path} ({time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()

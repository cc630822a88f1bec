#!/usr/bin/env python3
# Server RSS per idle WebSocket client of `iocp serve chat`: N clients upgrade (and join the
# default room) after 100 warm-up ones; prints the RSS growth per client.
# Usage: ulimit -n 20000; IOCP=target/release/iocp python3 bench/chat-idle-memory.py N PARK_AFTER
import socket, subprocess, time, re, sys, os, base64
n = int(sys.argv[1]); park = sys.argv[2]
p = subprocess.Popen([os.environ.get("IOCP", "target/release/iocp"),"serve","chat","--addr","127.0.0.1:0","--threads","2","--park-after",park,"--idle-timeout","0"], stderr=subprocess.PIPE, text=True, env=dict(os.environ, RUST_LOG="warn"))
addr=None
while addr is None:
    l = p.stderr.readline()
    m = re.search(r"listening on (\S+)", l)
    if m: addr = m.group(1)
host, port = addr.rsplit(":",1); port=int(port)
def rss():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])*1024
def conn():
    s = socket.create_connection((host,port))
    s.sendall(b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
    return s
warm = [conn() for _ in range(100)]
time.sleep(1.5)
for s in warm: s.recv(65536)
r0 = rss()
socks = [conn() for _ in range(n)]
time.sleep(3)
for s in socks: s.recv(65536)
time.sleep(1)
r1 = rss()
print(f"{n} idle WebSocket clients, park-after {park}: RSS {r0/1e6:.1f} MB -> {r1/1e6:.1f} MB: {(r1-r0)/n:.0f} bytes per client")
p.terminate(); p.wait()

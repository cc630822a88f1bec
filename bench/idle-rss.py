#!/usr/bin/env python3
# RSS per idle connection of `iocp serve echo --park-after 0`: warm the server with 200
# connections, then hold N connections that each echoed 64 B once; prints the RSS growth per
# connection. Usage: bench/idle-rss.py BIN uring|epoll N
import socket, subprocess, sys, time, resource, re
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
bin_, backend, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
import random; port = random.randint(20000, 32000)  # below the ephemeral range (32768-60999)
p = subprocess.Popen([bin_, "serve", "echo", "--backend", backend, "--addr", f"127.0.0.1:{port}", "--park-after", "0", "--threads", "2", "--max-connections", "20000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{p.pid}/status").read()).group(1)) * 1024
end = time.time() + 10
while True:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
    except OSError:
        if time.time() > end: raise
        time.sleep(0.05)
def round_(k):
    cs = []
    for i in range(k):
        s = socket.create_connection(("127.0.0.1", port), timeout=10); cs.append(s)
    for s in cs: s.sendall(b"x" * 64)
    for s in cs:
        got = b""
        while len(got) < 64: got += s.recv(64 - len(got))
    return cs
for s in round_(200): s.close()
time.sleep(1.5)
base = rss()
cs = round_(n)
time.sleep(1.5)
held = rss()
print(f"{bin_} {backend} {n}: {(held - base) / n:.0f} B/conn")
for s in cs: s.close()
p.terminate(); p.wait()

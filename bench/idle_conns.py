#!/usr/bin/env python3
"""Opens N keep-alive connections to a server, makes one request on each, and holds them
idle until stdin closes; prints "ready N" once all are idle. Used by bench/memory.sh."""
import resource, socket, sys

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
conns = []
req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
for i in range(n):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(req)
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"Hello Zero-Downtime!\n"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection %d closed by the server" % i)
        data += chunk
    conns.append(s)
print("ready", len(conns), flush=True)
sys.stdin.read()

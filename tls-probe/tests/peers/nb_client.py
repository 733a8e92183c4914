"""A non-blocking TLS client on an epoll selector, for tls-probe's real-peer tests.

Python's ssl module calls SSL_read_ex/SSL_write_ex. The client waits for a line on stdin
(so the profiler can attach first), then sends `--count` lines to an `openssl s_server -rev`
peer, one every `--interval` seconds, reading each reply until SSL wants to read again.
It prints one JSON line with its pid, the socket fd and what it did.
"""

import argparse
import json
import os
import selectors
import socket
import ssl
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--count", type=int, default=20)
parser.add_argument("--interval", type=float, default=0.02)
args = parser.parse_args()

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

raw = socket.create_connection(("127.0.0.1", args.port))
raw.setblocking(False)
sock = ctx.wrap_socket(raw, do_handshake_on_connect=False)
sel = selectors.EpollSelector()
sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
while True:
    try:
        sock.do_handshake()
        break
    except ssl.SSLWantReadError:
        sel.modify(sock, selectors.EVENT_READ)
    except ssl.SSLWantWriteError:
        sel.modify(sock, selectors.EVENT_WRITE)
    sel.select(5)
sel.modify(sock, selectors.EVENT_READ)

print(json.dumps({"pid": os.getpid(), "fd": sock.fileno(), "state": "ready"}), flush=True)
sys.stdin.readline()

want_read = 0
received = 0
for i in range(args.count):
    sock.sendall(f"ping {i}\n".encode())
    deadline = time.monotonic() + 2
    got = b""
    while not got.endswith(b"\n") and time.monotonic() < deadline:
        for _key, _mask in sel.select(0.5):
            while True:
                try:
                    chunk = sock.recv(4096)
                except ssl.SSLWantReadError:
                    want_read += 1
                    break
                if not chunk:
                    break
                got += chunk
    received += len(got)
    time.sleep(args.interval)

print(json.dumps({"pid": os.getpid(), "fd": sock.fileno(), "state": "done",
                  "want_read": want_read, "received_bytes": received}), flush=True)
sock.close()

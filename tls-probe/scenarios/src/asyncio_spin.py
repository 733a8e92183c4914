"""tls-probe-scenarios asyncio-spin: a WANT loop in a real Python asyncio program.

A hand-rolled asyncio TLS client (ssl.SSLObject over MemoryBIOs, driven by the loop's own
add_reader/add_writer on a raw non-blocking socket, as libraries that wrap a socket do) waits
for a reply with a writer callback left registered: the socket is always writable, so every
EPOLLOUT wake-up calls SSLObject.read() (SSL_read_ex), which answers WANT_READ. Its peer is a
TLS server thread of this process that completes the handshake and never answers.

argv: CERT KEY DURATION_S WAIT_STDIN(0|1). Speaks the scenario stdout contract: one READY
line, then (after a line on stdin with WAIT_STDIN) the load, then one DONE line.
"""

import asyncio
import json
import os
import socket
import ssl
import sys
import threading
import time

NAME = "asyncio-spin"
cert, key, duration, wait_stdin = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"


def thread_cpu_ms():
    return int(time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID) * 1000)


# The peer: accepts one connection, completes the handshake, never answers.
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
server_info = {}
server_ready = threading.Event()
stop = threading.Event()


def serve():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    raw, _ = listener.accept()
    conn = ctx.wrap_socket(raw, server_side=True)
    server_info.update(tid=threading.get_native_id(), fd=conn.fileno())
    server_ready.set()
    stop.wait()
    server_info["cpu_ms"] = thread_cpu_ms()
    conn.close()


server = threading.Thread(target=serve, daemon=True)
server.start()

loop = asyncio.new_event_loop()
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
cctx.check_hostname = False
cctx.verify_mode = ssl.CERT_NONE
sock = socket.create_connection(listener.getsockname())
sock.setblocking(False)
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = cctx.wrap_bio(incoming, outgoing)
counts = {"wakeups": 0, "want_read": 0, "read_bytes": 0}
handshaken = loop.create_future()


def flush():
    data = outgoing.read()
    if data:
        sock.send(data)


def handshake():
    try:
        incoming.write(sock.recv(65536))
    except BlockingIOError:
        return
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        flush()
        return
    flush()
    loop.remove_reader(sock)
    handshaken.set_result(None)


def want_reply():
    counts["wakeups"] += 1
    try:
        counts["read_bytes"] += len(obj.read(4096))
    except ssl.SSLWantReadError:
        counts["want_read"] += 1


try:
    obj.do_handshake()
except ssl.SSLWantReadError:
    pass
flush()
loop.add_reader(sock, handshake)
loop.run_until_complete(handshaken)
server_ready.wait()

tid = threading.get_native_id()
ready = {
    "scenario": NAME,
    "pid": os.getpid(),
    "threads": [
        {"role": "client", "tid": tid, "fds": [sock.fileno()]},
        {"role": "server", "tid": server_info["tid"], "fds": [server_info["fd"]]},
    ],
}
print("READY " + json.dumps(ready), flush=True)
if wait_stdin:
    sys.stdin.readline()

start = time.monotonic()
# The bug: waiting for the reply with a writer callback instead of a reader.
loop.add_writer(sock, want_reply)
done = loop.create_future()
loop.call_later(duration, done.set_result, None)
loop.run_until_complete(done)
loop.remove_writer(sock)
elapsed_ms = int((time.monotonic() - start) * 1000)
client_cpu = thread_cpu_ms()
stop.set()
server.join()

threads = [
    {"role": "client", "tid": tid, "cpu_ms": client_cpu, "counts": counts},
    {"role": "server", "tid": server_info["tid"], "cpu_ms": server_info["cpu_ms"], "counts": {}},
]
total = {f"client_{k}": v for k, v in counts.items()}
print("DONE " + json.dumps({"scenario": NAME, "pid": os.getpid(), "elapsed_ms": elapsed_ms,
                            "counts": total, "threads": threads}), flush=True)
print(f"{NAME}: {counts['wakeups']} wake-ups, {counts['want_read']} WANT_READ in {elapsed_ms} ms",
      file=sys.stderr)
# The scratch directory the scenario program wrote this script and its identity to.
here = os.path.dirname(os.path.abspath(__file__))
for f in ("cert.pem", "key.pem", os.path.basename(__file__)):
    os.remove(os.path.join(here, f))
os.rmdir(here)

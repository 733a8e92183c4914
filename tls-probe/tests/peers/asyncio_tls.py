"""Stdlib asyncio TLS peers (ssl.SSLObject over memory BIOs), printing the socket fds they use.

Usage:
  asyncio_tls.py server CERT KEY
      An echo server on 127.0.0.1. Prints "READY <port>", then for each connection
      "CONN {json}" with its fd and peer (as the program itself sees them).
  asyncio_tls.py client PORT CONNS ROUNDS [PAUSE_S]
      Prints "WAITING {json}" (its pid), waits for a line on stdin (so a profiler can
      attach first), then opens CONNS connections at once, connection i doing ROUNDS
      request/response exchanges of 100 + i bytes (the size tells the connections apart),
      PAUSE_S seconds apart (0 by default). Prints "CONN {json}" for each connection once
      connected (its index, fd, peer and local address), then "DONE {json}".
  asyncio_tls.py load PORT CONNS SECONDS
      A closed-loop load generator (plain blocking sockets, in this process): CONNS
      connections each doing request/response as fast as the server answers, for SECONDS.
      Prints "DONE {json}" with the exchanges per second.

  asyncio_tls.py spin PORT SECONDS
      A WANT loop in a hand-rolled asyncio TLS client (ssl.SSLObject over MemoryBIOs on the
      loop's own readiness callbacks, as libraries that wrap a raw socket do): after the
      handshake it waits for a reply that never comes (it sent nothing), with a writer
      callback left registered. Each EPOLLOUT wake-up calls SSLObject.read(), which raises
      SSLWantReadError: the loop spins at full speed without progress. Prints
      "READY {pid, tid, fd}" once spinning, "DONE {wakeups, want_read}" after SECONDS.

Every line is flushed at once.
"""

import asyncio
import json
import os
import socket
import ssl
import sys
import threading
import time


def say(tag, obj):
    print(f"{tag} {json.dumps(obj)}", flush=True)


async def serve(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    async def handle(reader, writer):
        sock = writer.get_extra_info("socket")
        say("CONN", {"fd": sock.fileno(), "peer": "%s:%d" % writer.get_extra_info("peername")[:2],
                     "tid": threading.get_native_id()})
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    async with server:
        await server.serve_forever()


async def client(port, conns, rounds, pause):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    say("WAITING", {"pid": os.getpid()})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    async def one(i):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        sock = writer.get_extra_info("socket")
        say("CONN", {"i": i, "fd": sock.fileno(),
                     "peer": "%s:%d" % writer.get_extra_info("peername")[:2],
                     "local": "%s:%d" % writer.get_extra_info("sockname")[:2],
                     "tid": threading.get_native_id()})
        msg = b"x" * (100 + i)
        for _ in range(rounds):
            writer.write(msg)
            await writer.drain()
            got = 0
            while got < len(msg):
                data = await reader.read(len(msg) - got)
                if not data:
                    raise ConnectionError("server closed")
                got += len(data)
            if pause:
                await asyncio.sleep(pause)
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(one(i) for i in range(conns)))
    say("DONE", {"pid": os.getpid(), "conns": conns, "rounds": rounds})


def load(port, conns, seconds):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    counts = [0] * conns
    stop = time.monotonic() + seconds

    def run(i):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with ctx.wrap_socket(raw) as s:
                msg = b"y" * 100
                while time.monotonic() < stop:
                    s.sendall(msg)
                    got = 0
                    while got < len(msg):
                        got += len(s.recv(len(msg) - got))
                    counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    say("DONE", {"exchanges": sum(counts), "per_s": sum(counts) / seconds})


def spin(port, seconds):
    loop = asyncio.new_event_loop()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing)
    counts = {"wakeups": 0, "want_read": 0}
    done = loop.create_future()

    def flush():
        data = outgoing.read()
        if data:
            sock.send(data)

    def pump_in():
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        incoming.write(data)

    def handshake():
        pump_in()
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            flush()
            return
        flush()
        loop.remove_reader(sock)
        say("READY", {"pid": os.getpid(), "tid": threading.get_native_id(), "fd": sock.fileno()})
        # The bug: waiting for the reply with a writer callback (the socket is always
        # writable) instead of a reader.
        loop.add_writer(sock, want_reply)

    def want_reply():
        counts["wakeups"] += 1
        try:
            obj.read(4096)
        except ssl.SSLWantReadError:
            counts["want_read"] += 1

    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    flush()
    loop.add_reader(sock, handshake)
    loop.call_later(seconds, done.set_result, None)
    loop.run_until_complete(done)
    say("DONE", counts)


def main():
    mode = sys.argv[1]
    if mode == "server":
        asyncio.run(serve(sys.argv[2], sys.argv[3]))
    elif mode == "client":
        pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
        asyncio.run(client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), pause))
    elif mode == "spin":
        spin(int(sys.argv[2]), float(sys.argv[3]))
    elif mode == "load":
        load(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

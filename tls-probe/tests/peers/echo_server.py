"""A TLS echo server: accepts one connection at a time and echoes what it reads.

Usage: echo_server.py CERT KEY. Prints "READY <port>" once listening on 127.0.0.1.
"""

import socket
import ssl
import sys

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(8)
print(f"READY {listener.getsockname()[1]}", flush=True)
while True:
    sock, _ = listener.accept()
    with ctx.wrap_socket(sock, server_side=True) as conn:
        while data := conn.recv(4096):
            conn.sendall(data)

"""A small threaded TCP forwarder that tests put between orchestrate and a real server.

    python tests/tcp_proxy.py LISTEN_PORT TARGET_HOST TARGET_PORT [--stop-before TEXT]

It listens on 127.0.0.1:LISTEN_PORT (0: any free port), prints the port it listens on
(one line, flushed) once it is ready, and forwards every accepted connection to
TARGET_HOST:TARGET_PORT, byte for byte, in both directions.

Tests make the server silent or vanish without touching the shared server: SIGSTOP
the proxy (the kernel still completes TCP handshakes into its listen backlog, but no
byte moves: a server that accepts and then never answers), SIGCONT it (everything
flows again), or kill it (every forwarded connection is reset).

``--stop-before TEXT`` makes the moment exact: the first time a client sends bytes that
hold TEXT (a statement's text; the test servers speak plain text, no TLS), the proxy
stops itself (SIGSTOP) before forwarding them, as if the server went silent just then.
SIGCONT lets them through and everything flows again.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading

CHUNK = 65536


class Trap:
    """Stops this process once, before forwarding the first client bytes that hold ``text``."""

    def __init__(self, text: bytes | None) -> None:
        self.text = text
        self.lock = threading.Lock()

    def check(self, data: bytes) -> None:
        if self.text is None or self.text not in data:
            return
        with self.lock:
            if self.text is None:
                return
            self.text = None
            os.kill(os.getpid(), signal.SIGSTOP)


def pump(source: socket.socket, sink: socket.socket, trap: Trap | None = None) -> None:
    """Copy ``source`` to ``sink`` until EOF or an error; then pass the end on."""
    try:
        while True:
            data = source.recv(CHUNK)
            if not data:
                break
            if trap is not None:
                trap.check(data)
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass


def serve(client: socket.socket, host: str, port: int, trap: Trap) -> None:
    try:
        upstream = socket.create_connection((host, port), timeout=10)
        upstream.settimeout(None)
    except OSError:
        client.close()
        return
    for sock in (client, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    back.start()
    pump(client, upstream, trap)
    back.join()
    client.close()
    upstream.close()


def main(argv: list[str]) -> int:
    stop_before: bytes | None = None
    if len(argv) == 5 and argv[3] == "--stop-before":
        stop_before, argv = argv[4].encode(), argv[:3]
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    listen_port, host, port = int(argv[0]), argv[1], int(argv[2])
    trap = Trap(stop_before)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(64)
    print(server.getsockname()[1], flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=serve, args=(client, host, port, trap), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

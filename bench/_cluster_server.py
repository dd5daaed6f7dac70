"""A small, fast HTTP server for bench_cluster.py, runnable both ways the benchmark compares:

- socket-activated (procsup cluster mode): serves on fd 3 when LISTEN_FDS=1 and LISTEN_PID is
  its own pid, and sends READY=1 to $NOTIFY_SOCKET once it does;
- on its own: `_cluster_server.py PORT` binds 127.0.0.1:PORT with SO_REUSEPORT (so N copies
  share the port, the kernel spreading connections across them).

Every answer is 200 with the serving pid as the body; HTTP/1.1 keep-alive unless the request
says `Connection: close` (or is HTTP/1.0). SIGTERM: stop accepting and exit at once (what a
rolling reload waits for). Stdlib asyncio only, no request parsing beyond the header's end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

BODY = str(os.getpid()).encode()
KEEP = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
    len(BODY),
    BODY,
)


class Http(asyncio.Protocol):
    """One connection: answer each complete request head (GET, no body)."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head, self.buf = self.buf[:end].lower(), self.buf[end + 4 :]
            if b"connection: close" in head or head.split(b"\r\n", 1)[0].endswith(b"1.0"):
                self.transport.write(CLOSE)
                self.transport.close()
                return
            self.transport.write(KEEP)


def listener() -> socket.socket:
    if os.environ.get("LISTEN_FDS") == "1" and os.environ.get("LISTEN_PID") == str(os.getpid()):
        return socket.socket(fileno=3)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", int(sys.argv[1])))
    sock.listen(1024)
    return sock


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, sock=listener(), backlog=1024)
    done = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, done.set_result, None)
    if path := os.environ.get("NOTIFY_SOCKET"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", "\0" + path[1:] if path.startswith("@") else path)
    await done
    server.close()


if __name__ == "__main__":
    asyncio.run(main())

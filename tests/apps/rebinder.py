"""Test app that behaves like nginx in the foreground: binds 127.0.0.1:PORT itself, retrying
bind() every 0.1 s for up to 2.5 s while the address is in use (then exits 1), then serves HTTP,
answering its pid and its generation (how many SIGHUP reloads it did).

argv: PORT HUP, where HUP says what SIGHUP does: "reload" (in place: same process, same
socket, "reloaded N" on stdout) or "die" (the default action: the process is killed).
SIGTERM: stop serving and exit 0."""

import errno
import os
import signal
import socket
import sys
import threading
import time

port, on_hup = int(sys.argv[1]), sys.argv[2]
generation = 0


def _reload(*_: object) -> None:
    global generation
    generation += 1
    print(f"reloaded {generation}", flush=True)


signal.signal(signal.SIGHUP, _reload if on_hup == "reload" else signal.SIG_DFL)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))


def serve(conn: socket.socket) -> None:
    """Answer one HTTP request (whatever it asks) with the pid and generation, then close."""
    with conn:
        conn.settimeout(5)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        body = f"{os.getpid()} {generation}".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))


def accept_forever(sock: socket.socket) -> None:
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx: TIME_WAIT is no obstacle
deadline = time.monotonic() + 2.5
while True:
    try:
        sock.bind(("127.0.0.1", port))
        break
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
            print(f"bind() to 127.0.0.1:{port} failed: {exc}", file=sys.stderr, flush=True)
            sys.exit(1)
        print(f"bind() to 127.0.0.1:{port}: address in use, retrying", file=sys.stderr,
              flush=True)
        time.sleep(0.1)
sock.listen(128)
print(f"listening on 127.0.0.1:{port}", flush=True)
threading.Thread(target=accept_forever, args=(sock,), daemon=True).start()
while True:
    time.sleep(3600)

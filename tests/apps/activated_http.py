"""Test app: an HTTP server on the socket-activated fds 3.. (LISTEN_FDS/LISTEN_PID), answering
its own pid. argv[1]: "notify" sends READY=1 once serving, "never" never does, "started"
sends nothing. SIGTERM stops it gracefully: the request in hand is finished, then exit 0."""

import http.server
import os
import signal
import socket
import sys
import threading

mode = sys.argv[1] if len(sys.argv) > 1 else "started"
nfds = int(os.environ.get("LISTEN_FDS", "0"))
if int(os.environ.get("LISTEN_PID", "0")) != os.getpid() or nfds < 1:
    print(f"bad activation: {os.environ.get('LISTEN_PID')} {os.environ.get('LISTEN_FDS')}",
          file=sys.stderr, flush=True)
    sys.exit(3)
open_fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
print(f"fds {open_fds} names {os.environ.get('LISTEN_FDNAMES')}", flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


servers = []
for fd in range(3, 3 + nfds):
    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    srv.socket.close()
    srv.socket = socket.socket(fileno=fd)
    servers.append(srv)
server = servers[0]
for extra in servers[1:]:
    threading.Thread(target=extra.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()


def stop() -> None:
    for srv in servers:
        srv.shutdown()


signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop).start())


def notify(message: bytes) -> None:
    path = os.environ["NOTIFY_SOCKET"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message, "\0" + path[1:] if path.startswith("@") else path)


if mode == "notify":
    notify(b"READY=1\nSTATUS=serving on fd 3")


held: list[bytearray] = []


def hog(mib: int, marker: str) -> None:
    """$HOG_MIB and $HOG_MARKER: the first instance to create the marker then holds that much
    resident memory (a leak, for max_memory_restart), $HOG_AFTER seconds (default 3) after it
    started: after the first memory check, which would count it over the limit from the start."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return
    hoard = bytearray(mib << 20)
    for i in range(0, len(hoard), 4096):
        hoard[i] = 1
    held.append(hoard)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)


if os.environ.get("HOG_MIB"):
    after = float(os.environ.get("HOG_AFTER", "3"))
    threading.Timer(after, hog, (int(os.environ["HOG_MIB"]), os.environ["HOG_MARKER"])).start()
server.serve_forever(poll_interval=0.05)
server.socket.detach()  # the daemon keeps the listening socket open; do not close our copy early

"""Test app: a socket-activated HTTP server (fd 3) that sends READY=1 at once but accepts
nothing until the file argv[1] exists, so that clients queue in its listening socket's accept
queue. Answers its own pid. SIGTERM: exit at once, without accepting what is queued."""

import http.server
import os
import signal
import socket
import sys
import time

gate = sys.argv[1]
if int(os.environ.get("LISTEN_PID", "0")) != os.getpid() or os.environ.get("LISTEN_FDS") != "1":
    print("bad activation", file=sys.stderr, flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))


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


with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
    s.sendto(b"READY=1\nSTATUS=gated", os.environ["NOTIFY_SOCKET"])
while not os.path.exists(gate):
    time.sleep(0.02)
server = http.server.HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)
print("accepting", flush=True)
server.serve_forever(poll_interval=0.05)

"""A plain Python HTTP server for procsup's cluster mode: it serves on the socket procsupd
hands it as fd 3 (systemd socket activation) and says READY=1 once it does."""

import http.server
import os
import signal
import socket
import threading


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the name http.server expects
        body = f"hello from instance {os.environ.get('PROCSUP_INSTANCE')} (pid {os.getpid()})\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())


assert int(os.environ["LISTEN_PID"]) == os.getpid(), "not socket-activated"
server = http.server.ThreadingHTTPServer(("", 0), Hello, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)
# SIGTERM: finish the requests in hand, then exit (what a graceful reload needs)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
if "NOTIFY_SOCKET" in os.environ:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1\nSTATUS=serving", os.environ["NOTIFY_SOCKET"])
server.serve_forever()

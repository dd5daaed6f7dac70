"""Test app for health checks: an HTTP server on 127.0.0.1:argv[1]. GET /healthz answers 200,
or 500 while the file `sick-<its pid>` exists in its cwd; GET /moved answers 302. SIGUSR1
closes its listening socket (new connections are refused) and it keeps running; SIGTERM
exits 0."""

import http.server
import os
import signal
import sys
import threading


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/healthz")
        elif os.path.exists(f"sick-{os.getpid()}"):
            self.send_response(500)
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                           daemon=True)
serving.start()
print(f"listening on {sys.argv[1]}", flush=True)
closed = threading.Event()


def close_listener(*_: object) -> None:
    closed.set()


signal.signal(signal.SIGUSR1, close_listener)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
closed.wait()
server.shutdown()
server.server_close()
print("listener closed", flush=True)
while True:
    signal.pause()

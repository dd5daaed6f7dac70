"""The four programs of procsup's stack demo, one per role (argv[1]), Python's standard library
only. They talk to each other for real, so the order procsup starts them in matters:

  db       a tiny key-value server on 127.0.0.1:7390 (one command per line: GET k / SET k v /
           PING); it "loads its data" for a moment first, then logs "ready to accept
           connections", the line procsup waits for (ready = "log:...").
  migrate  a one-shot task: connects to db, records the schema version, exits 0.
  web      an HTTP server on the socket procsupd hands it (cluster mode, fd 3): GET / reads the
           schema version from db; GET /healthz answers 200 while db answers PING.
  worker   every 2 s asks web for a page and logs what it got.
"""

import http.server
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.request

DB = ("127.0.0.1", 7390)
WEB = "http://127.0.0.1:8390"


def log(text: str, *, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def db_call(line: str) -> str:
    with socket.create_connection(DB, timeout=2) as s:
        s.sendall(line.encode() + b"\n")
        return s.makefile().readline().strip()


def db() -> None:
    data: dict[str, str] = {}

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for raw in self.rfile:
                cmd, _, rest = raw.decode().strip().partition(" ")
                if cmd == "PING":
                    reply = "PONG"
                elif cmd == "GET":
                    reply = data.get(rest, "")
                elif cmd == "SET":
                    key, _, value = rest.partition(" ")
                    data[key] = value
                    reply = "OK"
                else:
                    reply = "ERR unknown command"
                self.wfile.write(reply.encode() + b"\n")

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(DB, Handler)
    log("db: loading data ...")
    time.sleep(1.5)  # what a real database does before it accepts connections
    log("db: ready to accept connections")
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    log("db: stopped")


def migrate() -> None:
    for version in (1, 2, 3):
        log(f"migrate: applying migration {version}")
        time.sleep(0.3)
        assert db_call(f"SET schema_version {version}") == "OK"
    log("migrate: schema is at version 3")


def web() -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server expects
            try:
                pong = db_call("PING") == "PONG"
                version = db_call("GET schema_version")
            except OSError as exc:
                pong, version = False, f"db unreachable: {exc}"
            if self.path == "/healthz":
                code, body = (200, "ok\n") if pong else (503, "db does not answer\n")
            else:
                code = 200
                body = (f"hello from web instance {os.environ.get('PROCSUP_INSTANCE')} "
                        f"(pid {os.getpid()}), schema version {version}\n")
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, format: str, *args: object) -> None:
            log(f"web: {self.address_string()} {format % args}")

    server = http.server.ThreadingHTTPServer(("", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=3)  # the listening socket procsupd holds
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log(f"web: serving {WEB}/ (instance {os.environ.get('PROCSUP_INSTANCE')})")
    server.serve_forever()


def worker() -> None:
    while True:
        try:
            with urllib.request.urlopen(WEB + "/", timeout=2) as r:
                log("worker: " + r.read().decode().strip())
        except OSError as exc:
            log(f"worker: web did not answer: {exc}", err=True)
        time.sleep(2)


if __name__ == "__main__":
    {"db": db, "migrate": migrate, "web": web, "worker": worker}[sys.argv[1]]()

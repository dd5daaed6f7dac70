"""Test app for gunicorn: answers the worker's pid; `?sleep=S` first holds the worker S seconds."""

import os
import time
from urllib.parse import parse_qs


def application(environ: dict[str, object], start_response: object) -> list[bytes]:
    query = parse_qs(str(environ.get("QUERY_STRING", "")))
    time.sleep(float(query.get("sleep", ["0"])[0]))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Length", str(len(body))),  # type: ignore[operator]
                              ("Connection", "close")])
    return [body]

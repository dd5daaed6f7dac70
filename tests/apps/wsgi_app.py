"""Test app for gunicorn: answers the worker's pid."""

import os


def application(environ: dict[str, object], start_response: object) -> list[bytes]:
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Length", str(len(body))),  # type: ignore[operator]
                              ("Connection", "close")])
    return [body]

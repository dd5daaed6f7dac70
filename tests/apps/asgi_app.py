"""Test app for uvicorn: an ASGI app answering its pid."""

import os


async def app(scope: dict[str, object], receive: object, send: object) -> None:
    if scope["type"] != "http":
        return
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                "headers": [(b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]

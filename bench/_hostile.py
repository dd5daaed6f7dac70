"""Hostile control clients: many concurrent connections sending garbage and oversized frames.

Run as a script by bench_hostile.py (and usable by hand):

    python bench/_hostile.py SOCKET [--clients 100] [--frames 10 | --seconds 30]

Each of the `--clients` concurrent clients loops: connect, send one bad frame, read whatever
the daemon answers until it closes (or 10 s), disconnect. The bad frames cycle through the
kinds of the fault-injection run of issue 11 (item 2):
- `big-json`: a 1 MiB frame, valid UTF-8, JSON whose command is a 1 MiB string (decoded in
  full before it is refused, and quoted back in the error message before the fix);
- `big-binary`: a 1 MiB frame of bytes that are not UTF-8;
- `huge-prefix`: a length prefix of 4 GiB - 1, then 1 MiB of bytes after it;
- `noise`: 1 MiB of bytes with no frame structure at all;
- `small`: a 1 KiB frame that is not JSON (within every limit: it has to be read).
Prints one JSON line at the end: connections made, refusals seen by error code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import struct
import time
from collections import Counter

MIB = 1 << 20


def _frames() -> list[bytes]:
    head = b'{"v":1,"cmd":"'
    body = head + b"x" * (MIB - len(head) - 2) + b'"}'
    return [
        struct.pack(">I", len(body)) + body,
        struct.pack(">I", MIB) + b"\xff\xfe" * (MIB // 2),
        struct.pack(">I", 0xFFFFFFFF) + b"y" * MIB,
        b"\x00\x01" * (MIB // 2),
        struct.pack(">I", 1024) + (b"{not json" * 114)[:1024],
    ]


async def _client(path: str, frames: list[bytes], stop: float, count: int | None,
                   seen: Counter[str]) -> None:
    i = 0
    while (count is None and time.monotonic() < stop) or (count is not None and i < count):
        data = frames[i % len(frames)]
        i += 1
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except OSError as exc:
            seen[f"connect:{type(exc).__name__}"] += 1
            await asyncio.sleep(0.01)
            continue
        seen["connections"] += 1
        try:
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            reply = await asyncio.wait_for(reader.read(65536), 10)
            if len(reply) > 4:
                try:
                    code = json.loads(reply[4:])["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = "unparsed"
                seen[str(code)] += 1
            else:
                seen["closed"] += 1
        except (ConnectionError, TimeoutError):
            seen["closed"] += 1
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _main(path: str, clients: int, frames_each: int | None, seconds: float) -> None:
    frames = _frames()
    seen: Counter[str] = Counter()
    stop = time.monotonic() + seconds
    await asyncio.gather(*(_client(path, frames, stop, frames_each, seen)
                           for _ in range(clients)))
    print(json.dumps(dict(seen)), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("socket")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--frames", type=int, default=None, help="bad frames per client, then exit")
    p.add_argument("--seconds", type=float, default=30.0, help="without --frames: run this long")
    a = p.parse_args()
    asyncio.run(_main(a.socket, a.clients, a.frames, a.seconds))


if __name__ == "__main__":
    main()

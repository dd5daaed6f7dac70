"""procsup.probes against real servers on 127.0.0.1 (ephemeral ports) and real asyncio loops."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from procsup.probes import check, http_check, http_ready, tcp_check, tcp_ready, wait_ready

T = TypeVar("T")
DEADLINE = 10.0  # seconds; every wait in this file is bounded by it


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, DEADLINE * 2))


async def wait_until(cond: Callable[[], object], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Fake:
    """What a test server saw: request heads, and connections the client closed on it."""

    def __init__(self, answer: bytes | None, hold: bool) -> None:
        self.answer = answer  # sent after the request head; None = never answer
        self.hold = hold  # after answering, keep the connection until the client closes it
        self.port = 0
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            try:
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            except asyncio.IncompleteReadError:  # closed before a whole request (tcp probe)
                self.closed_by_client += 1
                return
            if self.answer is not None:
                writer.write(self.answer)
                await writer.drain()
            if self.hold or self.answer is None:
                await reader.read()  # returns b"" once the client has closed
                self.closed_by_client += 1
        except (ConnectionError, asyncio.LimitOverrunError):
            self.closed_by_client += 1
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(
    answer: bytes | None, *, hold: bool = False, sock: socket.socket | None = None
) -> AsyncIterator[Fake]:
    fake = Fake(answer, hold)
    if sock is None:
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    else:
        server = await asyncio.start_server(fake.handle, sock=sock)
    fake.port = server.sockets[0].getsockname()[1]
    try:
        yield fake
    finally:
        for w in fake.writers:
            w.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)  # let handlers see their connections end


@pytest.fixture
def unbound_port() -> Iterator[tuple[socket.socket, int]]:
    """A port bound on 127.0.0.1 but not listening: connections are refused, and nothing else
    can take the port meanwhile. Calling `listen()` on the socket makes it accept."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


def ok(body: bytes = b"ok") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


# -- tcp -------------------------------------------------------------------------------------


def test_tcp_ready_connects_and_closes_at_once() -> None:
    async def main() -> None:
        async with serving(None) as fake:
            assert await tcp_ready("127.0.0.1", fake.port, timeout=2)
            await wait_until(lambda: fake.closed_by_client == 1, "the probe to close")
            assert fake.requests == []  # nothing was sent

    run(main())


def test_tcp_refused(unbound_port: tuple[socket.socket, int]) -> None:
    _sock, port = unbound_port
    assert not run(tcp_ready("127.0.0.1", port, timeout=2))


def test_tcp_ipv6_target() -> None:
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    with sock:
        sock.listen()
        port = sock.getsockname()[1]

        async def main() -> bool:
            deadline = asyncio.get_running_loop().time() + 5
            return await wait_ready(f"tcp://[::1]:{port}", deadline=deadline)

        assert run(main())


# -- http ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "ready"),
    [
        (ok(), True),
        (b"HTTP/1.0 204 No Content\r\n\r\n", True),
        (b"HTTP/1.1 200\r\n\r\n", True),  # reason phrase is optional
        (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n", False),
        (b"HTTP/1.1 404 Not Found\r\n\r\n", False),
        (b"hello there\r\n", False),  # garbage
        (b"HTTP/1.1 2000 OK\r\n\r\n", False),
        (b"HTTP/1.1 20", False),  # cut short, then closed
        (b"", False),  # closed without a word
        (b"\x16\x03\x01\x00", False),  # a TLS server
    ],
)
def test_http_status(answer: bytes, ready: bool) -> None:
    async def main() -> None:
        async with serving(answer) as fake:
            assert await http_ready(f"http://127.0.0.1:{fake.port}/health", timeout=2) is ready

    run(main())


def test_http_request_is_well_formed() -> None:
    async def main() -> None:
        async with serving(ok()) as fake:
            url = f"http://127.0.0.1:{fake.port}/health?full=1"
            assert await http_ready(url, timeout=2)
            assert await http_ready(f"http://127.0.0.1:{fake.port}", timeout=2)
            assert await http_ready(f"http://127.0.0.1:{fake.port}/a b/\u00e9#frag", timeout=2)
        first, bare, odd = (r.decode("ascii").split("\r\n") for r in fake.requests)
        assert first[0] == "GET /health?full=1 HTTP/1.1"
        assert f"Host: 127.0.0.1:{fake.port}" in first
        assert "Connection: close" in first
        assert bare[0] == "GET / HTTP/1.1"
        assert odd[0] == "GET /a%20b/%C3%A9 HTTP/1.1"  # encoded, fragment not sent

    run(main())


def test_http_refused(unbound_port: tuple[socket.socket, int]) -> None:
    _sock, port = unbound_port
    assert not run(http_ready(f"http://127.0.0.1:{port}/", timeout=2))


def test_http_slow_server_times_out() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with serving(None) as fake:  # reads the request, never answers
            start = loop.time()
            assert not await http_ready(f"http://127.0.0.1:{fake.port}/", timeout=0.3)
            elapsed = loop.time() - start
            await wait_until(lambda: fake.closed_by_client == 1, "the probe to hang up")
        assert 0.25 <= elapsed < 2.0

    run(main())


def test_http_reads_a_bounded_amount() -> None:
    # A server that streams a megabyte with no line end: the probe gives up after 1 KiB at once
    # instead of buffering it all or waiting for the timeout.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with serving(b"x" * 1_000_000, hold=True) as fake:
            start = loop.time()
            assert not await http_ready(f"http://127.0.0.1:{fake.port}/", timeout=5)
            assert loop.time() - start < 2.0
            await wait_until(lambda: fake.closed_by_client == 1, "the probe to hang up")

    run(main())


# -- health checks: what went wrong, in words -----------------------------------------------


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (ok(), None),
        (b"HTTP/1.1 204 No Content\r\n\r\n", None),
        (b"HTTP/1.1 302 Found\r\nLocation: /login\r\n\r\n", None),  # 3xx passes a health check
        (b"HTTP/1.1 500 Internal Server Error\r\n\r\n",
         "GET /healthz answered 500 Internal Server Error"),
        (b"HTTP/1.1 503\r\n\r\n", "GET /healthz answered 503"),
        (b"HTTP/1.1 404 Not \x1b[31mFound\r\n\r\n", "GET /healthz answered 404 Not ?[31mFound"),
        (b"HTTP/1.1 418 " + b"x" * 500 + b"\r\n\r\n", "GET /healthz answered 418 " + "x" * 60),
        (b"hello there\r\n", "{where} answered no HTTP status line"),
        (b"", "{where} closed the connection without an answer"),
    ],
)
def test_health_check_http(answer: bytes, error: str | None) -> None:
    async def main() -> None:
        async with serving(answer) as fake:
            where = f"127.0.0.1:{fake.port}"
            got = await check(f"http://{where}/healthz", timeout=2)
            assert got == (error.format(where=where) if error else None)

    run(main())


def test_readiness_wants_a_2xx_where_a_health_check_takes_a_3xx() -> None:
    async def main() -> None:
        async with serving(b"HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n") as fake:
            url = f"http://127.0.0.1:{fake.port}/"
            assert await http_check(url, timeout=2) == "GET / answered 301 Moved"
            assert await http_check(url, timeout=2, accept="23") is None

    run(main())


def test_health_check_refused_and_slow(unbound_port: tuple[socket.socket, int]) -> None:
    _sock, port = unbound_port

    async def main() -> None:
        where = f"127.0.0.1:{port}"
        assert await check(f"tcp://{where}", timeout=2) == (
            f"cannot connect to {where}: connection refused")
        assert await check(f"http://{where}/", timeout=2) == (
            f"cannot connect to {where}: connection refused")
        async with serving(None) as fake:  # accepts, reads the request, never answers
            slow = f"127.0.0.1:{fake.port}"
            assert await check(f"http://{slow}/", timeout=0.2) == (
                f"no answer from {slow} within 200ms")
            assert await check(f"tcp://{slow}", timeout=2) is None

    run(main())


def test_tcp_check_timeout_is_said_with_its_duration() -> None:
    # A listener whose accept queue is full and that never accepts: a further SYN is dropped,
    # so a connect is neither accepted nor refused.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers: list[socket.socket] = []
        try:
            for _ in range(16):
                c = socket.socket()
                fillers.append(c)
                c.settimeout(0.3)
                try:
                    c.connect(("127.0.0.1", port))
                except TimeoutError:
                    break
            else:
                pytest.skip("the accept queue never filled up")
            assert run(tcp_check("127.0.0.1", port, timeout=0.2)) == (
                f"no connection to 127.0.0.1:{port} within 200ms")
        finally:
            for c in fillers:
                c.close()


def test_health_check_rejects_a_bad_target() -> None:
    with pytest.raises(ValueError, match="expected tcp://HOST:PORT"):
        run(check("ftp://127.0.0.1:21", timeout=1))


@pytest.mark.parametrize(
    "url", ["tcp://127.0.0.1:80", "https://127.0.0.1:443/", "http://127.0.0.1/", "http://:80/"]
)
def test_http_ready_rejects_a_bad_url(url: str) -> None:
    with pytest.raises(ValueError):
        run(http_ready(url, timeout=1))


# -- wait_ready ------------------------------------------------------------------------------


def test_wait_ready_tcp_server_starting_late(unbound_port: tuple[socket.socket, int]) -> None:
    sock, port = unbound_port

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        loop.call_later(0.3, sock.listen)
        assert await wait_ready(f"tcp://127.0.0.1:{port}", deadline=start + 5, interval=0.05)
        assert 0.3 <= loop.time() - start < 2.0

    run(main())


def test_wait_ready_http_server_starting_late(unbound_port: tuple[socket.socket, int]) -> None:
    sock, port = unbound_port

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ready = asyncio.Event()

        async def late_server() -> None:
            await asyncio.sleep(0.3)
            async with serving(ok(), sock=sock):
                await ready.wait()

        server = asyncio.create_task(late_server())
        try:
            assert await wait_ready(f"http://127.0.0.1:{port}/", deadline=start + 5)
            assert 0.3 <= loop.time() - start < 2.0
        finally:
            ready.set()
            await server

    run(main())


def test_wait_ready_gives_up_at_the_deadline(unbound_port: tuple[socket.socket, int]) -> None:
    _sock, port = unbound_port

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert not await wait_ready(f"tcp://127.0.0.1:{port}", deadline=start + 0.5)
        assert 0.5 <= loop.time() - start < 1.5

    run(main())


def test_wait_ready_polls_at_the_interval() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with serving(b"HTTP/1.1 503 Busy\r\n\r\n") as fake:
            start = loop.time()
            target = f"http://127.0.0.1:{fake.port}/"
            assert not await wait_ready(target, deadline=start + 0.55, interval=0.1)
        # About one attempt per 0.1 s: neither a busy loop nor a single try.
        assert 3 <= len(fake.requests) <= 7

    run(main())


def test_wait_ready_slow_server_bounded_by_the_deadline() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with serving(None) as fake:
            start = loop.time()
            target = f"http://127.0.0.1:{fake.port}/"
            assert not await wait_ready(target, deadline=start + 0.4)
            assert 0.4 <= loop.time() - start < 1.5

    run(main())


def test_wait_ready_past_deadline_makes_no_attempt() -> None:
    async def main() -> None:
        async with serving(ok()) as fake:
            target = f"http://127.0.0.1:{fake.port}/"
            assert not await wait_ready(target, deadline=99.0, clock=lambda: 100.0)
            now = asyncio.get_running_loop().time()
            assert not await wait_ready(target, deadline=now - 1)
            await asyncio.sleep(0.05)
            assert fake.connections == 0

    run(main())


def test_wait_ready_with_an_explicit_clock() -> None:
    async def main() -> None:
        async with serving(ok()) as fake:
            target = f"http://127.0.0.1:{fake.port}/"
            assert await wait_ready(target, deadline=time.monotonic() + 5, clock=time.monotonic)

    run(main())


def test_wait_ready_cancelled_while_polling(unbound_port: tuple[socket.socket, int]) -> None:
    _sock, port = unbound_port

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(wait_ready(f"tcp://127.0.0.1:{port}", deadline=loop.time() + 30))
        await asyncio.sleep(0.3)
        assert not task.done()
        start = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.time() - start < 0.5

    run(main())


def test_wait_ready_cancelled_mid_attempt_closes_the_connection() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with serving(None) as fake:
            target = f"http://127.0.0.1:{fake.port}/"
            task = asyncio.create_task(wait_ready(target, deadline=loop.time() + 30))
            await wait_until(lambda: fake.requests, "the probe's request")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_until(lambda: fake.closed_by_client == 1, "the probe to hang up")

    run(main())


@pytest.mark.parametrize(
    "target",
    [
        "started",
        "ftp://127.0.0.1:21",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:70000",
        "tcp://127.0.0.1:80/path",
        "tcp://[::1:80",
        "http://:80/",
        "http://h\u00f6st:80/",
    ],
)
def test_wait_ready_rejects_a_bad_target_at_once(target: str) -> None:
    async def main() -> None:
        await wait_ready(target, deadline=asyncio.get_running_loop().time() + 5)

    with pytest.raises(ValueError):
        run(main())


def test_wait_ready_rejects_a_non_positive_interval() -> None:
    async def main() -> None:
        deadline = asyncio.get_running_loop().time() + 5
        await wait_ready("tcp://127.0.0.1:80", deadline=deadline, interval=0)

    with pytest.raises(ValueError):
        run(main())

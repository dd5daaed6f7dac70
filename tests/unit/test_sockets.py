"""sockets: real listeners, real connections, real activated child processes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import procsup
from procsup.errors import ProcsupError
from procsup.sockets import (
    ACTIVATION_SHELL,
    BindError,
    _redirections,
    activation_argv,
    bind,
    fd_name,
    fd_names,
    release,
)

TIMEOUT = 5.0


@pytest.fixture
def closing() -> Iterator[list[socket.socket]]:
    """Sockets appended here are closed after the test."""
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def _port(sock: socket.socket) -> int:
    port = sock.getsockname()[1]
    assert isinstance(port, int)
    return port


def _roundtrip(sock: socket.socket, family: int, addr: str | tuple[object, ...]) -> None:
    """Connect to `addr`, accept on the listening `sock`, and pass a byte both ways."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(TIMEOUT)
        client.connect(addr)
        sock.settimeout(TIMEOUT)
        try:
            conn, _peer = sock.accept()
        finally:
            sock.settimeout(None)  # back to blocking, as bound
        with conn:
            conn.settimeout(TIMEOUT)
            client.sendall(b"x")
            assert conn.recv(1) == b"x"
            conn.sendall(b"y")
            assert client.recv(1) == b"y"


def _assert_listening(sock: socket.socket) -> None:
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    assert sock.getblocking()  # as systemd passes them: the instances share the mode
    assert not os.get_inheritable(sock.fileno())


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback here")


# -- tcp ------------------------------------------------------------------------------------------


def test_tcp_ipv4_listens_and_accepts(closing: list[socket.socket]) -> None:
    sock = bind("tcp://127.0.0.1:0")
    closing.append(sock)
    _assert_listening(sock)
    assert sock.family == socket.AF_INET
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    _roundtrip(sock, socket.AF_INET, ("127.0.0.1", _port(sock)))


def test_tcp_wildcard_ipv4(closing: list[socket.socket]) -> None:
    sock = bind("tcp://0.0.0.0:0")
    closing.append(sock)
    assert sock.getsockname()[0] == "0.0.0.0"
    _roundtrip(sock, socket.AF_INET, ("127.0.0.1", _port(sock)))


def test_tcp_localhost_is_resolved(closing: list[socket.socket]) -> None:
    sock = bind("tcp://localhost:0")
    closing.append(sock)
    first = socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    assert sock.family == first[0][0]
    host = sock.getsockname()[0]
    _roundtrip(sock, sock.family, (host, _port(sock)))


def _pending_capacity(path: Path, closing: list[socket.socket], limit: int) -> int:
    """How many non-blocking connects a Unix listener queues before refusing (up to limit)."""
    for count in range(limit):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.setblocking(False)
        closing.append(c)
        try:
            c.connect(str(path))
        except BlockingIOError:
            return count
    return limit


def test_backlog_is_applied(tmp_path: Path, closing: list[socket.socket]) -> None:
    small, large = tmp_path / "small.sock", tmp_path / "large.sock"
    closing.append(bind(f"unix:{small}", backlog=2))
    closing.append(bind(f"unix:{large}"))  # default 1024
    assert _pending_capacity(small, closing, 50) <= 3
    assert _pending_capacity(large, closing, 50) == 50


@needs_ipv6
def test_ipv6_wildcard_is_v6only_and_coexists_with_ipv4(closing: list[socket.socket]) -> None:
    six = bind("tcp://[::]:0")
    closing.append(six)
    _assert_listening(six)
    assert six.family == socket.AF_INET6
    assert six.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    port = _port(six)
    four = bind(f"tcp://0.0.0.0:{port}")  # possible only because [::] is v6-only
    closing.append(four)
    _roundtrip(six, socket.AF_INET6, ("::1", port))
    _roundtrip(four, socket.AF_INET, ("127.0.0.1", port))


@needs_ipv6
def test_ipv6_loopback(closing: list[socket.socket]) -> None:
    sock = bind("tcp://[::1]:0")
    closing.append(sock)
    assert sock.getsockname()[0] == "::1"
    _roundtrip(sock, socket.AF_INET6, ("::1", _port(sock)))


def test_port_in_use_names_address_and_reason(closing: list[socket.socket]) -> None:
    first = bind("tcp://127.0.0.1:0")
    closing.append(first)
    address = f"tcp://127.0.0.1:{_port(first)}"
    with pytest.raises(BindError) as info:
        bind(address)
    err = info.value
    assert isinstance(err, ProcsupError)
    assert err.address == address
    assert err.reason == "address already in use"
    assert str(err) == f"cannot listen on {address}: address already in use"


def test_reuseport_shares_the_port_only_when_asked(closing: list[socket.socket]) -> None:
    a = bind("tcp://127.0.0.1:0", reuseport=True)
    closing.append(a)
    assert a.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    address = f"tcp://127.0.0.1:{_port(a)}"
    b = bind(address, reuseport=True)
    closing.append(b)
    assert _port(b) == _port(a)
    with pytest.raises(BindError, match="address already in use"):
        bind(address)  # a socket without SO_REUSEPORT may not join them
    # Connections land on one of the two; both are listening.
    _assert_listening(b)


def test_without_reuseport_a_second_socket_fails(closing: list[socket.socket]) -> None:
    a = bind("tcp://127.0.0.1:0")
    closing.append(a)
    with pytest.raises(BindError, match="address already in use"):
        bind(f"tcp://127.0.0.1:{_port(a)}", reuseport=True)


def test_rebind_after_release_despite_time_wait(closing: list[socket.socket]) -> None:
    sock = bind("tcp://127.0.0.1:0")
    port = _port(sock)
    # Leave a connection in TIME_WAIT on the server side (the server closes first).
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
        sock.settimeout(TIMEOUT)
        conn, _ = sock.accept()
        conn.close()
        client.settimeout(TIMEOUT)
        assert client.recv(1) == b""
    release(sock)
    assert sock.fileno() == -1
    again = bind(f"tcp://127.0.0.1:{port}")  # SO_REUSEADDR
    closing.append(again)
    assert _port(again) == port


def test_address_not_on_this_host() -> None:
    with pytest.raises(BindError) as info:
        bind("tcp://192.0.2.1:0")  # TEST-NET-1: never a local address
    assert info.value.reason == "address not available on this host"


@pytest.mark.parametrize(
    "address",
    [
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:http",
        "tcp://127.0.0.1:70000",
        "tcp://:8000",
        "tcp://::1:8000",
        "tcp://[::1]8000",
        "udp://127.0.0.1:8000",
        "unix:",
    ],
)
def test_invalid_address(address: str) -> None:
    with pytest.raises(BindError, match="invalid address") as info:
        bind(address)
    assert info.value.address == address


def test_unresolvable_host() -> None:
    with pytest.raises(BindError, match=r"cannot resolve no-such-host\.invalid"):
        bind("tcp://no-such-host.invalid:8000")


# -- unix -----------------------------------------------------------------------------------------


def test_unix_listens_with_mode(tmp_path: Path, closing: list[socket.socket]) -> None:
    path = tmp_path / "app.sock"
    sock = bind(f"unix:{path}")
    closing.append(sock)
    _assert_listening(sock)
    st_ = os.stat(path)
    assert stat.S_ISSOCK(st_.st_mode)
    assert stat.S_IMODE(st_.st_mode) == 0o660
    _roundtrip(sock, socket.AF_UNIX, str(path))


def test_unix_mode_is_applied_regardless_of_umask(
    tmp_path: Path, closing: list[socket.socket]
) -> None:
    path = tmp_path / "app.sock"
    old = os.umask(0o077)
    try:
        closing.append(bind(f"unix:{path}", unix_mode=0o666))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
    closing.append(bind(f"unix:{tmp_path / 'b.sock'}", unix_mode=0o600))
    assert stat.S_IMODE(os.stat(tmp_path / "b.sock").st_mode) == 0o600


def test_unix_stale_socket_file_is_replaced(tmp_path: Path, closing: list[socket.socket]) -> None:
    path = tmp_path / "app.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.listen()
    os.link(path, tmp_path / "keep")  # holds the old inode so it cannot be reused
    old_inode = os.stat(path).st_ino
    dead.close()  # the file stays behind, as after a daemon killed with SIGKILL
    assert path.exists()
    sock = bind(f"unix:{path}")
    closing.append(sock)
    assert os.stat(path).st_ino != old_inode
    _roundtrip(sock, socket.AF_UNIX, str(path))


def test_unix_live_socket_is_refused(tmp_path: Path, closing: list[socket.socket]) -> None:
    path = tmp_path / "app.sock"
    live = bind(f"unix:{path}")
    closing.append(live)
    inode = os.stat(path).st_ino
    with pytest.raises(BindError) as info:
        bind(f"unix:{path}")
    assert info.value.reason == "address already in use"
    assert info.value.address == f"unix:{path}"
    assert os.stat(path).st_ino == inode  # not unlinked
    # The probe's connection reached the live listener and was closed at once: its owner
    # sees one empty connection (as with gunicorn's or systemd's same check).
    live.settimeout(TIMEOUT)
    probe, _ = live.accept()
    with probe:
        probe.settimeout(TIMEOUT)
        assert probe.recv(1) == b""
    live.settimeout(None)
    _roundtrip(live, socket.AF_UNIX, str(path))  # and still served


def test_unix_live_socket_with_full_backlog_is_refused(
    tmp_path: Path, closing: list[socket.socket]
) -> None:
    path = tmp_path / "app.sock"
    live = bind(f"unix:{path}", backlog=0)
    closing.append(live)
    # Fill the backlog so a blocking connect would hang: the probe must not.
    assert _pending_capacity(path, closing, 10) < 10
    with pytest.raises(BindError, match="address already in use"):
        bind(f"unix:{path}")
    assert path.exists()


def test_unix_bound_datagram_socket_is_refused(
    tmp_path: Path, closing: list[socket.socket]
) -> None:
    path = tmp_path / "notify.sock"
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    closing.append(dgram)
    dgram.bind(str(path))
    with pytest.raises(BindError, match="address already in use"):
        bind(f"unix:{path}")
    assert path.exists()


def test_unix_regular_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    path.write_text("precious")
    with pytest.raises(BindError, match="path exists and is not a socket"):
        bind(f"unix:{path}")
    assert path.read_text() == "precious"


def test_unix_symlink_to_stale_socket_is_refused(
    tmp_path: Path, closing: list[socket.socket]
) -> None:
    target = tmp_path / "real.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(target))
    dead.close()
    link = tmp_path / "app.sock"
    link.symlink_to(target)
    with pytest.raises(BindError, match="not a socket"):
        bind(f"unix:{link}")
    assert link.is_symlink() and target.exists()


def test_unix_missing_directory_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(BindError) as info:
        bind(f"unix:{missing / 'app.sock'}")
    assert info.value.reason == f"directory {missing} does not exist"
    assert not missing.exists()


def test_unix_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(BindError, match="is not a directory"):
        bind(f"unix:{tmp_path / 'file' / 'app.sock'}")
    with pytest.raises(BindError, match="invalid address"):  # a path ending in "/" names no socket
        bind(f"unix:{tmp_path / 'file'}/")


def test_unix_path_too_long(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 120)
    with pytest.raises(BindError, match="path too long"):
        bind(f"unix:{path}")


def test_unix_rejects_reuseport(tmp_path: Path) -> None:
    with pytest.raises(BindError) as info:
        bind(f"unix:{tmp_path / 'app.sock'}", reuseport=True)
    assert info.value.reason == "reuseport needs tcp"
    assert not (tmp_path / "app.sock").exists()


_UNPRIVILEGED_BIND = textwrap.dedent(
    """
    import sys
    from procsup.sockets import BindError, bind
    try:
        bind(sys.argv[1])
    except BindError as exc:
        print(exc.reason)
    else:
        print("bound")
    """
)


@pytest.mark.nonroot  # root binds anywhere: the refusal is seen as another user
def test_permission_denied(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(BindError) as info:
            bind(f"unix:{locked / 'app.sock'}")
        assert info.value.reason == "permission denied"
        return
    # root ignores directory modes: bind as nobody in a child instead, in a directory nobody
    # can reach (pytest's base temp dir is private), with an interpreter nobody may run (a
    # venv under /root is not one).
    with tempfile.TemporaryDirectory() as shared:
        os.chmod(shared, 0o755)
        locked = Path(shared) / "locked"
        locked.mkdir(mode=0o555)
        _permission_denied_as_nobody(f"unix:{locked / 'app.sock'}")


def _permission_denied_as_nobody(address: str) -> None:
    package_root = str(Path(procsup.__file__).resolve().parent.parent)
    out = None
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        try:
            out = subprocess.run(
                [python, "-c", _UNPRIVILEGED_BIND, address],
                user=65534,
                group=65534,
                extra_groups=[],
                env={"PYTHONPATH": package_root},
                capture_output=True,
                text=True,
                timeout=TIMEOUT * 2,
                cwd="/",
                check=False,
            )
        except OSError:
            continue
        if out.returncode == 0:
            break
    if out is None or out.returncode != 0:
        pytest.skip("as root, and no python that nobody can run with procsup importable")
    assert out.stdout.strip() == "permission denied"


def test_release_removes_stale_unix_file_only(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    sock = bind(f"unix:{path}")
    release(sock)
    assert not path.exists()

    # Another copy of the listening socket (an instance still running) keeps the file.
    sock = bind(f"unix:{path}")
    copy = sock.dup()
    try:
        release(sock)
        assert path.exists()
    finally:
        copy.close()

    # A file put in its place by someone else is not ours to remove.
    path.unlink()
    sock = bind(f"unix:{path}")
    path.unlink()
    path.write_text("other")
    release(sock)
    assert path.read_text() == "other"


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "name"),
    [
        ("tcp://127.0.0.1:8000", "tcp-127.0.0.1-8000"),
        ("tcp://0.0.0.0:80", "tcp-0.0.0.0-80"),
        ("tcp://[::]:8000", "tcp-..-8000"),
        ("tcp://[::1]:8000", "tcp-..1-8000"),
        ("tcp://localhost:8000", "tcp-localhost-8000"),
        ("unix:/run/app.sock", "unix-run-app.sock"),
        ("unix:/run/my app/a:b.sock", "unix-run-my_app-a.b.sock"),
        ("unix:/tmp/caf\u00e9.sock", "unix-tmp-caf_.sock"),
    ],
)
def test_fd_name(address: str, name: str) -> None:
    assert fd_name(address) == name


def test_fd_names_joined_in_order() -> None:
    assert (
        fd_names(["tcp://0.0.0.0:8000", "tcp://[::]:8000", "unix:/run/app.sock"])
        == "tcp-0.0.0.0-8000:tcp-..-8000:unix-run-app.sock"
    )
    assert fd_names([]) == ""


def test_fd_name_is_valid_for_systemd_even_when_long() -> None:
    name = fd_name("unix:/" + "d/" * 200 + "end.sock")
    assert len(name) == 255
    assert name.endswith("d-end.sock")
    assert all("!" <= c <= "~" and c != ":" for c in name)


def test_fd_name_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError):
        fd_name("udp://127.0.0.1:53")


# -- activation: the fd shuffle as a model --------------------------------------------------------


def _simulate(fds: Sequence[int]) -> dict[int, str]:
    """Apply the redirection words to a model fd table: fd -> which socket it holds."""
    table: dict[int, str] = {0: "stdin", 1: "stdout", 2: "stderr"}
    table.update({fd: f"sock{i}" for i, fd in enumerate(fds)})
    for word in _redirections(fds):
        left, _, right = word.partition("<&")
        target = int(left)
        if right == "-":
            table.pop(target, None)
        else:
            assert int(right) in table, f"{word}: reads a closed fd in {_redirections(fds)}"
            table[target] = table[int(right)]
    return table


@given(
    st.lists(st.integers(min_value=3, max_value=40), min_size=1, max_size=8, unique=True)
)
def test_redirections_place_any_arrangement(fds: list[int]) -> None:
    expected = {0: "stdin", 1: "stdout", 2: "stderr"}
    expected.update({3 + i: f"sock{i}" for i in range(len(fds))})
    assert _simulate(fds) == expected


@given(st.permutations([3, 4, 5, 6, 7]))
def test_redirections_place_every_permutation_of_the_targets(fds: list[int]) -> None:
    assert _simulate(fds) == {0: "stdin", 1: "stdout", 2: "stderr"} | {
        3 + i: f"sock{i}" for i in range(5)
    }


def test_redirections_nothing_to_do_when_in_place() -> None:
    assert _redirections([3, 4, 5]) == []
    argv, _env = activation_argv(["app"], [3, 4, 5], "a:b:c")
    assert "<&" not in argv[argv.index("-c") + 1]


def test_activation_argv_shape() -> None:
    argv, env = activation_argv(["/usr/bin/app", "--port", "x y"], [27, 28], "a:b")
    assert argv[0] == ACTIVATION_SHELL
    i = argv.index("-c")
    assert argv[i + 2 :] == ("procsup-activate", "/usr/bin/app", "--port", "x y")
    assert 'exec "$@"' in argv[i + 1]
    assert env == {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}


def test_activation_argv_without_fds_is_a_no_op() -> None:
    assert activation_argv(["app", "-x"], [], "") == (("app", "-x"), {})


@pytest.mark.parametrize(
    ("argv", "fds", "names"),
    [
        ([], [3], "a"),
        (["app"], [2], "a"),
        (["app"], [5, 5], "a:b"),
        (["app"], [5, 6], "a"),
        (["app"], [5], "a:b"),
    ],
)
def test_activation_argv_rejects(argv: list[str], fds: list[int], names: str) -> None:
    with pytest.raises(ValueError):
        activation_argv(argv, fds, names)


@pytest.mark.skipif(
    os.path.realpath("/bin/sh") != os.path.realpath(shutil.which("dash") or "/nonexistent"),
    reason="/bin/sh is not dash",
)
def test_why_not_dash() -> None:
    """The reason ACTIVATION_SHELL is not /bin/sh on Debian: dash names only fds 0-9."""
    r, w = os.pipe()
    high = fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 27)
    try:
        out = subprocess.run(
            ["/bin/sh", "-c", f"exec 3>&{high}"], pass_fds=[high], capture_output=True,
            text=True, timeout=TIMEOUT, check=False,
        )
    finally:
        for fd in (r, w, high):
            os.close(fd)
    assert out.returncode != 0
    assert "Bad fd number" in out.stderr


# -- activation: real children --------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, os, socket, sys
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError:
            continue  # the directory fd listdir used, closed by now
        fds.append(fd)
    n = int(os.environ["LISTEN_FDS"])
    blocking = [os.get_blocking(3 + i) for i in range(n)]
    socks = [socket.socket(fileno=3 + i) for i in range(n)]
    report = {
        "pid": os.getpid(),
        "listen_pid": os.environ["LISTEN_PID"],
        "listen_fds": os.environ["LISTEN_FDS"],
        "names": os.environ["LISTEN_FDNAMES"],
        "fds": sorted(fds),
        "socknames": [s.getsockname() for s in socks],
        "inodes": [os.fstat(s.fileno()).st_ino for s in socks],
        "listening": [s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for s in socks],
        "argv": sys.argv[1:],
        "blocking": blocking,
    }
    print(json.dumps(report), flush=True)
    server = socks[0]
    server.settimeout(10)
    conn, _ = server.accept()
    conn.sendall(b"hello from " + str(os.getpid()).encode())
    conn.close()
    """
)


@contextlib.contextmanager
def _placed(socks: Sequence[socket.socket], numbers: Sequence[int]) -> Iterator[list[int]]:
    """Put a copy of socks[i] at fd numbers[i] in this process (as the daemon might hold
    them), restoring whatever pytest had at those numbers afterwards."""
    # First park every socket above the range we are about to overwrite.
    parked = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 500) for s in socks]
    saved: dict[int, tuple[int, bool] | None] = {}
    try:
        for fd in numbers:
            try:
                saved[fd] = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 500), os.get_inheritable(fd))
            except OSError as exc:
                assert exc.errno == errno.EBADF
                saved[fd] = None
        for src, fd in zip(parked, numbers, strict=True):
            os.dup2(src, fd, inheritable=False)
        yield list(numbers)
    finally:
        for fd, old in saved.items():
            if old is None:
                os.close(fd)
            else:
                os.dup2(old[0], fd, inheritable=old[1])
                os.close(old[0])
        for fd in parked:
            os.close(fd)


def _run_activated(
    socks: Sequence[socket.socket], fds: Sequence[int], addresses: list[str]
) -> None:
    """Start CHILD through activation_argv with the sockets at `fds` in this process; check
    its report; connect to the first socket and get the child's answer."""
    names = fd_names(addresses)
    argv, extra = activation_argv([sys.executable, "-c", CHILD, "arg one", "$HOME"], fds, names)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra}
    proc = subprocess.Popen(
        argv, pass_fds=fds, close_fds=True, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(TIMEOUT)
            pytest.fail(f"child failed: {proc.stderr.read().decode() if proc.stderr else ''}")
        report = json.loads(line)
        n = len(socks)
        assert report["pid"] == proc.pid  # the shell exec'd the app: same pid
        assert report["listen_pid"] == str(proc.pid)
        assert report["listen_fds"] == str(n)
        assert report["names"] == names
        assert report["argv"] == ["arg one", "$HOME"]
        assert report["fds"] == [0, 1, 2, *range(3, 3 + n)]  # nothing else leaked in
        expected_names = [
            list(s.getsockname()) if s.family != socket.AF_UNIX else s.getsockname()
            for s in socks
        ]
        assert report["socknames"] == expected_names
        assert report["inodes"] == [os.fstat(s.fileno()).st_ino for s in socks]
        assert report["listening"] == [1] * n
        assert report["blocking"] == [True] * n

        first = socks[0]
        with socket.socket(first.family, socket.SOCK_STREAM) as client:
            client.settimeout(TIMEOUT)
            name = first.getsockname()
            client.connect(name if first.family == socket.AF_UNIX else (name[0], name[1]))
            data = b""
            while chunk := client.recv(100):
                data += chunk
        assert data == b"hello from " + str(proc.pid).encode()
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _listeners(tmp_path: Path, n: int, closing: list[socket.socket]) -> tuple[
    list[socket.socket], list[str]
]:
    kinds = ["tcp://127.0.0.1:0", f"unix:{tmp_path / 'a.sock'}", "tcp://0.0.0.0:0"]
    socks = [bind(a) for a in kinds[:n]]
    closing.extend(socks)
    return socks, kinds[:n]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_activation_end_to_end(tmp_path: Path, n: int, closing: list[socket.socket]) -> None:
    socks, addresses = _listeners(tmp_path, n, closing)
    # The daemon's fds: wherever bind put them, here high and out of the way.
    with _placed(socks, [60 + 7 * i for i in range(n)]) as fds:
        _run_activated(socks, fds, addresses)


@pytest.mark.parametrize(
    "numbers",
    [
        [4, 3],  # a swap: both sources are targets
        [4, 5, 3],  # a 3-cycle
        [5, 3],  # 3 must move to 4 before 5 lands on 3
        [3, 70],  # already in place + one move
        [3, 4, 5],  # nothing to move
        [5, 80, 4],  # chain through the target range
    ],
)
def test_activation_with_colliding_fds(
    tmp_path: Path, numbers: list[int], closing: list[socket.socket]
) -> None:
    socks, addresses = _listeners(tmp_path, len(numbers), closing)
    with _placed(socks, numbers) as fds:
        _run_activated(socks, fds, addresses)


def test_activation_missing_executable_exits_127(closing: list[socket.socket]) -> None:
    sock = bind("tcp://127.0.0.1:0")
    closing.append(sock)
    with _placed([sock], [90]) as fds:
        argv, extra = activation_argv(["/nonexistent/app"], fds, fd_names(["tcp://x:1"]))
        out = subprocess.run(
            argv, pass_fds=fds, env={"PATH": "/usr/bin:/bin", **extra}, capture_output=True,
            text=True, timeout=TIMEOUT, check=False,
        )
    assert out.returncode == 127
    assert "procsup-activate" in out.stderr and "/nonexistent/app" in out.stderr

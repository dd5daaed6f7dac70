"""Bind and hold the listening sockets of cluster apps (layer 2: the only module that binds).

procsupd binds every `listen` address itself and keeps it for the life of the app, so instances
restart and reload without the port ever closing (contract, "Cluster mode"). Each instance
receives the sockets by the systemd socket-activation protocol: fds 3, 4, ... in `listen` order,
`LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` (the instance's own pid).

Addresses (validated by `values.check_listen`; this module re-parses them because layer 2 may
not import layer 1):

- ``tcp://HOST:PORT``: HOST is an IPv4 literal, a name resolved with getaddrinfo (first result,
  so ``localhost`` may be 127.0.0.1 or ::1 depending on /etc/hosts and gai.conf) or, in
  brackets, an IPv6 literal (``tcp://[::]:8000``, ``tcp://[::1]:8000``). Port 0 picks a free
  port (tests use it; the config schema asks for 1..65535).
- ``unix:/path/to/sock``: a Unix stream socket at that path.

Socket options:

- SO_REUSEADDR on every TCP socket, so a restarted daemon rebinds while old connections linger
  in TIME_WAIT.
- IPV6_V6ONLY=1 on every IPv6 socket: ``tcp://[::]:8000`` takes IPv6 only, so a separate
  ``tcp://0.0.0.0:8000`` can coexist with it. For dual stack, list both addresses. (An
  IPv4-mapped literal such as ``[::ffff:127.0.0.1]`` therefore cannot be bound: use the IPv4
  form.)
- SO_REUSEPORT only when asked (``balance = "reuseport"``: one socket per instance slot on the
  same port; the kernel spreads connections over them). The kernel lets a port be shared only
  by sockets that all set SO_REUSEPORT and belong to the same effective uid.

Every socket returned is listening, close-on-exec (nothing inherits it by accident, the
spawner passes it explicitly with `Popen(pass_fds=...)`) and left in blocking mode. The mode
is not the daemon's business (it never accepts on these sockets) but it is the instances':
O_NONBLOCK belongs to the open file, which the daemon and every instance share. Blocking is
what systemd passes by default (`NonBlocking=no`), so an app written for socket activation
that accepts without setting a mode works; async servers set non-blocking themselves. Note
that one instance changing the mode changes it for all holders of that socket (as with any
pre-fork server).

A Unix socket path is never created in a missing directory, and an existing path is replaced
only when it is a stale socket: a socket file to which a connection is refused (its listener
is gone). A live socket (another daemon, or instances of a previous daemon still holding it)
and any other kind of file are refused (a symlink counts as "not a socket"); the probe of a
live socket reaches its owner as one connection closed at once. There is an unavoidable window
between the refused connection and the unlink in which another program could bind the path.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Sequence

from procsup import units
from procsup.errors import ProcsupError

__all__ = [
    "ACTIVATION_SHELL",
    "BindError",
    "activation_argv",
    "bind",
    "fd_name",
    "fd_names",
    "release",
]

#: Longest path a sockaddr_un can hold (108 bytes including the terminating NUL on Linux).
_UNIX_PATH_MAX = 107
#: systemd's limit for one fd name (fdname_is_valid).
_FDNAME_MAX = 255

#: The shell that places the sockets at fds 3.. between Popen's exec and the app's exec.
#: Not /bin/sh: Debian's /bin/sh is dash, whose redirections name only fds 0-9 (`exec 3<&27` is
#: "Syntax error: Bad fd number"), and the daemon's sockets sit at fd numbers above 9. bash is
#: Essential on Debian and present on every mainstream distribution; /bin/sh is the fallback
#: for systems without it (fine where its sh accepts fd numbers above 9).
ACTIVATION_SHELL = "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"

#: $0 of the activation shell: what its own error messages are prefixed with.
_ACTIVATION_NAME = "procsup-activate"


class BindError(ProcsupError):
    """A listen address cannot be bound. `reason` is short and lower-case ("address already in
    use", "permission denied", ...); str() is "cannot listen on ADDRESS: REASON", which is what
    `status` shows for the errored app. `errno` is the OS error's, when there was one."""

    def __init__(self, address: str, reason: str, errno: int | None = None) -> None:
        super().__init__(f"cannot listen on {address}: {reason}")
        self.address = address
        self.reason = reason
        self.errno = errno


_REASONS = {
    errno.EADDRINUSE: "address already in use",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EADDRNOTAVAIL: "address not available on this host",
}


def _reason(exc: OSError) -> str:
    """A short reason for `exc`: fixed wording for the usual errnos, else the C library's."""
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


# -- addresses ------------------------------------------------------------------------------------


def _split_tcp(address: str) -> tuple[str, int, bool]:
    """ "tcp://HOST:PORT" -> (host, port, bracketed). Raises ValueError when malformed."""
    rest = address[len("tcp://") :]
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep or not tail.startswith(":"):
            raise ValueError("expected tcp://[IPV6]:PORT")
        port_text, bracketed = tail[1:], True
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep or ":" in host:
            raise ValueError("expected tcp://HOST:PORT (an IPv6 host goes in brackets)")
        bracketed = False
    if not host:
        raise ValueError("missing host")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("port must be 0..65535")
    return host, int(port_text), bracketed


def _unix_path(address: str) -> str:
    """ "unix:/path" or "unix:/path?mode=0600" -> "/path". Raises ValueError when malformed."""
    return units.split_unix_listen(address)[0]


# -- binding --------------------------------------------------------------------------------------


def bind(
    address: str,
    *,
    reuseport: bool = False,
    backlog: int = 1024,
    unix_mode: int = 0o660,
) -> socket.socket:
    """Bind `address` and listen on it with `backlog`; see the module docstring for the
    address forms, the options set and the stale-socket rule.

    `reuseport` sets SO_REUSEPORT (TCP only). `unix_mode` is applied to a Unix socket's file
    after bind and before listen, so no connection is accepted under a laxer mode than asked
    (the file is briefly there with the umask's mode, but nothing can connect yet).

    Returns a listening, blocking-mode, close-on-exec socket. Raises BindError (never a bare
    OSError) with the address and a short reason; nothing is left open or created on failure.
    """
    if address.startswith("tcp://"):
        return _bind_tcp(address, reuseport=reuseport, backlog=backlog)
    if address.startswith("unix:"):
        if reuseport:
            raise BindError(address, "reuseport needs tcp")
        try:
            mode = units.split_unix_listen(address)[1]
        except ValueError as exc:
            raise BindError(address, f"invalid address: {exc}") from None
        return _bind_unix(address, backlog=backlog, mode=unix_mode if mode is None else mode)
    raise BindError(address, 'invalid address: expected "tcp://HOST:PORT" or "unix:/path"')


def _resolve(
    address: str, host: str, port: int, bracketed: bool
) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    """The first getaddrinfo result for a passive TCP socket: (family, sockaddr)."""
    family = socket.AF_INET6 if bracketed else socket.AF_UNSPEC
    flags = socket.AI_PASSIVE | (socket.AI_NUMERICHOST if bracketed else 0)
    try:
        infos = socket.getaddrinfo(
            host, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP, flags
        )
    except socket.gaierror as exc:
        raise BindError(address, f"cannot resolve {host}: {exc.strerror}") from None
    except UnicodeError:
        raise BindError(address, f"cannot resolve {host}: invalid host name") from None
    if not infos:  # getaddrinfo raises rather than answering nothing, but do not trust it
        raise BindError(address, f"cannot resolve {host}")
    fam, _type, _proto, _canon, sockaddr = infos[0]
    return fam, tuple(sockaddr)


def _bind_tcp(address: str, *, reuseport: bool, backlog: int) -> socket.socket:
    try:
        host, port, bracketed = _split_tcp(address)
    except ValueError as exc:
        raise BindError(address, f"invalid address: {exc}") from None
    family, sockaddr = _resolve(address, host, port, bracketed)
    try:
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:
        raise BindError(address, _reason(exc), exc.errno) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(address, _reason(exc), exc.errno) from None
    return sock


def _path_state(path: str) -> str:
    """What is at `path`: "absent", "stale" (a socket file nobody listens on), "live" (a socket
    with a listener, or one of another type) or "other" (not a socket). Raises OSError when the
    path cannot be examined."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    if not stat.S_ISSOCK(st.st_mode):
        return "other"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Non-blocking: a live listener whose backlog is full answers EAGAIN instead of
        # stalling the daemon.
        probe.setblocking(False)
        probe.connect(path)
    except ConnectionRefusedError:
        return "stale"
    except FileNotFoundError:
        return "absent"  # removed since the lstat
    except BlockingIOError:
        return "live"
    except OSError as exc:
        if exc.errno == errno.EPROTOTYPE:  # a datagram/seqpacket socket someone has bound
            return "live"
        raise
    finally:
        probe.close()
    return "live"


def _bind_unix(address: str, *, backlog: int, mode: int) -> socket.socket:
    try:
        path = _unix_path(address)
    except ValueError as exc:
        raise BindError(address, f"invalid address: {exc}") from None
    if len(os.fsencode(path)) > _UNIX_PATH_MAX:
        raise BindError(address, f"path too long (at most {_UNIX_PATH_MAX} bytes)")
    parent = os.path.dirname(path) or "."
    try:
        if not stat.S_ISDIR(os.stat(parent).st_mode):
            raise BindError(address, f"{parent} is not a directory")
    except (FileNotFoundError, NotADirectoryError):
        raise BindError(address, f"directory {parent} does not exist") from None
    except OSError as exc:
        raise BindError(address, _reason(exc), exc.errno) from None
    try:
        state = _path_state(path)
        if state == "other":
            raise BindError(address, "path exists and is not a socket")
        if state == "live":
            raise BindError(address, "address already in use")
        if state == "stale":
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    except OSError as exc:
        raise BindError(address, _reason(exc), exc.errno) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise BindError(address, _reason(exc), exc.errno) from None
    try:
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        try:
            os.unlink(path)  # we just created it
        except OSError:
            pass
        raise BindError(address, _reason(exc), exc.errno) from None
    return sock


def adopt(fd: int) -> socket.socket:
    """The listening socket `fd` that the previous image of procsupd bound (a re-exec handed
    it over), as `bind` would have returned it."""
    return socket.socket(fileno=fd)


def release(sock: socket.socket) -> None:
    """Close a socket returned by `bind`. For a Unix socket, also remove its file when it is
    stale afterwards (by the same rule as `bind`): a copy still listening elsewhere (an
    instance not yet stopped) keeps the file, and a file someone put in its place is left
    alone. Never raises."""
    path: str | None = None
    if sock.family == socket.AF_UNIX:
        try:
            name = sock.getsockname()
        except OSError:
            name = None
        if isinstance(name, str) and name and not name.startswith("\0"):
            path = name
    sock.close()
    if path is None:
        return
    try:
        if _path_state(path) == "stale":
            os.unlink(path)
    except OSError:
        pass


# -- socket activation ----------------------------------------------------------------------------


def fd_name(address: str) -> str:
    """The LISTEN_FDNAMES entry for one address, valid for sd_listen_fds_with_names.

    Scheme: ``tcp-HOST-PORT`` with the host as written (not resolved, brackets dropped) and
    each ":" of an IPv6 host turned into "." (``tcp://127.0.0.1:8000`` -> ``tcp-127.0.0.1-8000``,
    ``tcp://[::]:8000`` -> ``tcp-..-8000``, ``tcp://[::1]:8000`` -> ``tcp-..1-8000``);
    ``unix-PATH`` with the leading "/" dropped and every "/" turned into "-"
    (``unix:/run/app.sock`` -> ``unix-run-app.sock``). Then any ":" becomes "." and any other
    character outside printable ASCII (and space) becomes "_"; a name longer than 255
    characters keeps its last 255 (the end of a path is its distinctive part).
    Raises ValueError for an address that is neither tcp:// nor unix:.
    """
    if address.startswith("tcp://"):
        host, port, _bracketed = _split_tcp(address)
        raw = f"tcp-{host}-{port}"
    elif address.startswith("unix:"):
        raw = "unix-" + _unix_path(address).lstrip("/").replace("/", "-")
    else:
        raise ValueError(f"invalid listen address {address!r}")
    name = "".join(
        "." if c == ":" else c if "!" <= c <= "~" else "_" for c in raw
    )
    return name[-_FDNAME_MAX:]


def fd_names(addresses: Sequence[str]) -> str:
    """The LISTEN_FDNAMES value: `fd_name` of each address, in order, joined by ":"."""
    return ":".join(fd_name(a) for a in addresses)


def _redirections(fds: Sequence[int]) -> list[str]:
    """Shell redirection words that leave the socket at fds[i] on fd 3+i and close every
    other fd in play, e.g. ["3<&27", "4<&28", "27<&-", "28<&-"]. Applied left to right.

    This is a parallel move: a target is overwritten only once no pending move still reads
    it; when only cycles remain (e.g. [4, 3], a swap), one of their fds is first parked on a
    spare fd above every fd in play, which is free in the child (Popen(close_fds=True) leaves
    it nothing but 0-2 and `fds`)."""
    n = len(fds)
    targets = set(range(3, 3 + n))
    pending = {3 + i: src for i, src in enumerate(fds) if src != 3 + i}
    spare = max([*fds, 2 + n]) + 1
    spare_used = False
    words: list[str] = []
    while pending:
        sources = set(pending.values())
        free = sorted(t for t in pending if t not in sources)
        if free:
            target = free[0]
            words.append(f"{target}<&{pending.pop(target)}")
            continue
        # Every pending target is still to be read by another move: a cycle. Park the
        # content of the lowest target on the spare fd and read it from there instead.
        target = min(pending)
        words.append(f"{spare}<&{target}")
        spare_used = True
        pending = {t: (spare if s == target else s) for t, s in pending.items()}
    leftovers = sorted(set(fds) - targets) + ([spare] if spare_used else [])
    words.extend(f"{fd}<&-" for fd in leftovers)
    return words


def activation_argv(
    argv: Sequence[str], fds: Sequence[int], names: str
) -> tuple[tuple[str, ...], dict[str, str]]:
    """Wrap `argv` so that the app starts with the sockets `fds` at 3, 4, ... and the
    socket-activation variables set. Returns (argv to start, variables to add to its env).

    `fds` are the sockets' fd numbers in the daemon, in LISTEN_FDNAMES order; start the
    result with `Popen(new_argv, pass_fds=fds, close_fds=True, env={**env, **extra})`.
    `names` is `fd_names(...)` of the same sockets (one name per fd).

    Why a shell: LISTEN_PID must be the app's own pid, which exists only after the fork, and
    no Python may run between fork and exec in the daemon (no preexec_fn), while Popen can
    only dup fds onto 0-2. So the child execs ACTIVATION_SHELL, which moves the fds into
    place, exports LISTEN_PID=$$ and `exec`s the app: the app keeps the shell's pid, so $$ is
    its pid. A shell exec costs about 1.5 ms; a Python shim would cost 20-30 ms of interpreter
    start-up per instance. bash runs with --posix so it reads no start-up file ($BASH_ENV)
    and its special built-ins (exec, export) cannot be shadowed by exported functions.

    A missing or non-executable app is then reported by the shell (exit status 127 or 126,
    message on the instance's stderr), not by Popen.

    With no fds there is nothing to activate: `argv` is returned unchanged with no variables.
    Raises ValueError for an empty argv, fds below 3 or repeated, or a names count that does
    not match.
    """
    if not argv:
        raise ValueError("empty argv")
    if not fds:
        return tuple(argv), {}
    if any(fd < 3 for fd in fds):
        raise ValueError(f"socket fds must be 3 or above (0-2 are stdio): {list(fds)}")
    if len(set(fds)) != len(fds):
        raise ValueError(f"repeated socket fd: {list(fds)}")
    if len(names.split(":")) != len(fds):
        raise ValueError(f"{len(fds)} fds but LISTEN_FDNAMES has names {names!r}")
    words = _redirections(fds)
    moves = f"exec {' '.join(words)}\n" if words else ""
    script = f'{moves}export LISTEN_PID=$$\nexec "$@"'
    shell: tuple[str, ...] = (ACTIVATION_SHELL,)
    if ACTIVATION_SHELL.endswith("/bash"):
        shell += ("--posix",)
    new_argv = (*shell, "-c", script, _ACTIVATION_NAME, *argv)
    return new_argv, {"LISTEN_FDS": str(len(fds)), "LISTEN_FDNAMES": names}

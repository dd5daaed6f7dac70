"""Which listening sockets a process group holds, read from `/proc` (layer 2, beside `spawn`).

`held(pgid)` answers what `reload` must know of a fork app's old instance: the addresses a
replacement could not bind while it runs. It lists the group's live processes (`procfs`), the
socket inodes of their open fds (`/proc/<pid>/fd/*` -> "socket:[INODE]"), and matches them
against the sockets in listening state of the group's network namespace (`/proc/<pid>/net/tcp`,
`tcp6`: state 0A; `unix`: a stream or seqpacket socket with __SO_ACCEPTCON, bound to a path or
an abstract name). UDP sockets are not counted: a bound datagram socket is not told apart from
a client's.

Linux only; it reads and never writes, and never raises for a process that goes away meanwhile.
`None` means the fds could not be read (another user's process, for a daemon not running as
root): the caller cannot tell, and must assume the worst.
"""

from __future__ import annotations

import os
import socket
import struct

from procsup import procfs

__all__ = ["group_sockets", "held", "parse_inet", "parse_unix", "unused_socket"]

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp{,6}
_ACCEPTCON = 0x10000  # __SO_ACCEPTCON in the Flags column of /proc/net/unix
_STREAM_TYPES = ("0001", "0005")  # SOCK_STREAM, SOCK_SEQPACKET


def held(pgid: int) -> tuple[str, ...] | None:
    """The listening addresses (`127.0.0.1:8081`, `[::]:80`, `unix:/run/app.sock`,
    `unix:@name`) the live processes of group `pgid` hold, sorted, each once; `()` when none
    (or the group is gone); None when a member's fds could not be read."""
    got = group_sockets(pgid)
    if got is None:
        return None
    return tuple(sorted({addr for addr in got[1].values()}))


def unused_socket(pgid: int, inherited: list[int]) -> str | None:
    """Whether group `pgid` (a cluster instance) uses the listening sockets it was handed
    (their inodes, fd 3, 4, ... in order): None when it does (or its fds cannot be read),
    else what it does instead. A server without socket activation closes them, or keeps fd 3
    open unused and binds a port of its own; either way the app's port hangs."""
    got = group_sockets(pgid)
    if got is None:
        return None
    inodes, listening_here = got
    own = sorted({a for i, a in listening_here.items() if i not in inherited})
    for n, inode in enumerate(inherited):
        if inode in inodes and not own:
            continue
        detail = (f"it listens on {', '.join(own)} itself" if own
                  else "no process of it holds that socket")
        return (f"does not use its listening socket fd {3 + n} ({detail}): the server needs "
                "socket activation support, see docs/cluster.md")
    return None


def group_sockets(pgid: int) -> tuple[set[int], dict[int, str]] | None:
    """The socket inodes the live processes of group `pgid` hold, and of those the ones in
    listening state with their addresses; None when a member's fds could not be read."""
    members = [st.pid for st in procfs.stats() if st.pgrp == pgid and not st.dead]
    inodes: set[int] = set()
    readable = False
    for pid in members:
        found = _socket_inodes(pid)
        if found is None:
            if procfs.stat(pid) is None:
                continue  # it went away meanwhile: it holds nothing
            return None
        readable = True
        inodes |= found
    if not inodes or not readable:
        return set(), {}
    leader = pgid if pgid in members else members[0]  # the group's network namespace
    out: dict[int, str] = {}
    for name in ("tcp", "tcp6"):
        data = procfs.read(leader, f"net/{name}")
        if data is not None:
            out.update((inode, addr) for inode, addr in parse_inet(data, v6=name == "tcp6")
                       if inode in inodes)
    data = procfs.read(leader, "net/unix")
    if data is not None:
        out.update((inode, addr) for inode, addr in parse_unix(data) if inode in inodes)
    return inodes, out


def _socket_inodes(pid: int) -> set[int] | None:
    """Inodes of the sockets among `pid`'s open fds; None when they cannot be listed."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return None
    inodes = set()
    for name in names:
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def parse_inet(data: bytes, *, v6: bool) -> list[tuple[int, str]]:
    """(inode, "host:port") of every socket in listening state in the text of
    `/proc/net/tcp` (or `tcp6` with `v6`); IPv6 hosts in brackets. Malformed lines are
    skipped."""
    out = []
    for line in data.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3].decode() != _LISTEN:
            continue
        try:
            host_hex, port_hex = fields[1].decode().split(":")
            # The kernel prints the address as 32-bit words in host byte order.
            raw = b"".join(struct.pack("=I", int(host_hex[i : i + 8], 16))
                           for i in range(0, len(host_hex), 8))
            host = socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, raw)
            address = f"[{host}]:{int(port_hex, 16)}" if v6 else f"{host}:{int(port_hex, 16)}"
            out.append((int(fields[9]), address))
        except (ValueError, OSError, struct.error):
            continue
    return out


def parse_unix(data: bytes) -> list[tuple[int, str]]:
    """(inode, "unix:PATH" or "unix:@NAME") of every listening stream or seqpacket socket
    bound to a name in the text of `/proc/net/unix`. Malformed lines are skipped."""
    out = []
    for line in data.splitlines()[1:]:
        # Num RefCount Protocol Flags Type St Inode [Path]; a path may hold spaces
        fields = line.split(maxsplit=7)
        if len(fields) < 8:
            continue  # unnamed: nobody can bind to it
        try:
            flags, kind, inode = int(fields[3], 16), fields[4].decode(), int(fields[6])
        except ValueError:
            continue
        if flags & _ACCEPTCON and kind in _STREAM_TYPES:
            out.append((inode, "unix:" + fields[7].decode("utf-8", "replace")))
    return out

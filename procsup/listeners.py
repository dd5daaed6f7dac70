"""The listening sockets of cluster apps, held by procsupd for the app's life (layer 3, under
`running`, which alone uses them; `sockets` binds them).

Per app (`balance = "shared"`: every instance accepts on the same socket) or per instance slot
(`"reuseport"`: a replacement gets the same socket as the instance it replaces). Sockets are
kept per address, and the key includes the balance, so a `listen` change binds only what it
added and keeps the addresses it did not touch (their old instances still hold them).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping

from procsup import sockets, spawn
from procsup.model import AppSpec, ExecMode

#: app, instance index (reuseport) or None (shared), address, balance
ListenerKey = tuple[str, int | None, str, str]


class Listeners:
    """The held sockets, by `ListenerKey`."""

    def __init__(self) -> None:
        self.held: dict[ListenerKey, socket.socket] = {}

    def get(self, spec: AppSpec, index: int) -> list[socket.socket]:
        """The cluster app's listening sockets for instance `index`, in `listen` order, bound
        on first use. SpawnError names an address that cannot be bound (transient when for
        want of a resource)."""
        reuseport = spec.balance == "reuseport"
        socks = []
        for address in spec.listen:
            key = (spec.name, index if reuseport else None, address, spec.balance)
            sock = self.held.get(key)
            if sock is None:
                try:
                    sock = sockets.bind(address, reuseport=reuseport)
                except sockets.BindError as exc:
                    raise spawn.SpawnError(
                        str(exc), transient=exc.errno in spawn.TRANSIENT_ERRNOS) from None
                self.held[key] = sock
            socks.append(sock)
        return socks

    def close_unused(
        self, users: Iterable[tuple[AppSpec, int]], specs: Mapping[str, AppSpec]
    ) -> None:
        """Close the sockets nobody can use any more (app removed, an address or `balance`
        changed, reuseport slot scaled away): `users` are the instances that may still use
        theirs (spec, index), `specs` the applied definition of every app (instances not
        started yet keep a shared socket too). Running processes keep their own copies, and
        a socket no process accepts on would make clients hang instead of being refused."""
        wanted: set[ListenerKey] = set()
        for spec, index in users:
            if spec.exec_mode is ExecMode.CLUSTER:
                slot = index if spec.balance == "reuseport" else None
                wanted.update((spec.name, slot, a, spec.balance) for a in spec.listen)
        for name, spec in specs.items():
            if spec.exec_mode is ExecMode.CLUSTER and spec.balance != "reuseport":
                wanted.update((name, None, a, spec.balance) for a in spec.listen)
        for key in [k for k in self.held if k not in wanted]:
            sockets.release(self.held.pop(key))

    def release_all(self) -> None:
        for sock in self.held.values():
            sockets.release(sock)
        self.held.clear()

    def __len__(self) -> int:
        return len(self.held)

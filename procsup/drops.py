"""What a log file refused (layer 2 leaf, below `logs`): the lines and bytes dropped, the
episode of failures they belong to, and the words for it (the marker line put into the file
where writing resumed, the daemon log lines).

Pure bookkeeping: no I/O, every time is an argument. `logs.LogSink` keeps one `Ledger` per
path and says what happened (`fail`, `drop`, `resume`); `status` shows `Ledger.health`.
"""

from __future__ import annotations

import dataclasses
import datetime

__all__ = ["Episode", "Ledger", "LogHealth", "clock_text"]

_NL = b"\n"


def clock_text(wall: float) -> str:
    """A wall-clock time as status shows it: ISO 8601, local, with its UTC offset."""
    return datetime.datetime.fromtimestamp(wall).astimezone().isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class LogHealth:
    """What a log file refused: `error` is the current failure ("cannot write: No space left
    on device") and `since` its start (wall clock, seconds), both None once writing works
    again; `dropped_lines`/`dropped_bytes` count everything dropped on this path since the
    daemon started (they stay after a resume, and across runs of the app)."""

    path: str
    error: str | None
    since: float | None
    dropped_lines: int
    dropped_bytes: int

    def to_json(self) -> dict[str, object]:
        """One entry of `log_errors` in status (docs/protocol.md)."""
        since = None if self.since is None else clock_text(self.since)
        return {"path": self.path, "error": self.error, "since": since,
                "dropped_lines": self.dropped_lines, "dropped_bytes": self.dropped_bytes}


@dataclasses.dataclass(eq=False)
class Episode:
    """One stretch of refused writes, from the first failure to the next write that works."""

    cause: str  # the first failure, named by the marker line
    error: str  # the latest one, shown by status
    since: float  # wall clock of the first failure
    lines: int = 0
    size: int = 0  # bytes
    midline: bool = False  # the file ends inside a cut line: the marker ends that line first
    kinds: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(eq=False)
class Ledger:
    """The drops of one path: totals since the daemon started, and the episode going on."""

    lines: int = 0
    size: int = 0  # bytes
    episode: Episode | None = None

    @property
    def clean(self) -> bool:
        """Nothing was ever refused: nothing to show, nothing to keep."""
        return self.episode is None and not self.lines and not self.size

    def fail(self, error: str, now: float) -> bool:
        """A write or open failed with `error` ("cannot write: ..."): start or go on with the
        episode. True when this kind of failure is new in the episode (report it: one daemon
        log line per kind and episode, not one per chunk)."""
        if self.episode is None:
            self.episode = Episode(error, error, now)
        self.episode.error = error
        if error in self.episode.kinds:
            return False
        self.episode.kinds.add(error)
        return True

    def drop(self, chunk: bytes | memoryview, now: float, *, cut: bool | None = None,
             lines: int | None = None) -> None:
        """`chunk` (whole lines, or the unwritten rest of a chunk) was not written. `cut`: the
        kernel took the start of that chunk, and whether what it took ends inside a line.
        `lines`: how many lines it holds, when that is not its newlines (a journal entry)."""
        if self.episode is None:  # nothing failed: the sink has no file (closed under it)
            self.episode = Episode("the log file is not open", "the log file is not open", now)
        if cut is not None:
            self.episode.midline = cut
        if not chunk:
            return
        if lines is None:
            lines = bytes(chunk).count(_NL)
        self.lines += lines
        self.size += len(chunk)
        self.episode.lines += lines
        self.episode.size += len(chunk)

    def marker(self, prefix: bytes = b"") -> bytes:
        """The line that marks the gap in the file (after `prefix`, the date prefix of its
        lines), b"" when nothing was dropped; it begins with a newline when the file ends
        inside a line the failure cut short."""
        episode = self.episode
        if episode is None or not episode.size:
            return b""
        text = (f"[procsup] {episode.lines} lines ({episode.size} bytes) dropped since "
                f"{clock_text(episode.since)}: {episode.cause}\n").encode("utf-8", "replace")
        return (_NL if episode.midline else b"") + prefix + text

    def resume(self, path: str) -> str:
        """Writing works again: end the episode; the daemon log line that says so."""
        episode, self.episode = self.episode, None
        if episode is None:
            return f"logging to {path} resumed"
        return (f"logging to {path} resumed; {episode.lines} lines ({episode.size} bytes) "
                f"were dropped since {clock_text(episode.since)}")

    def health(self, path: str) -> LogHealth | None:
        """What `path` refused, or None when it never refused anything."""
        if self.clean:
            return None
        episode = self.episode
        return LogHealth(path, episode.error if episode else None,
                         episode.since if episode else None, self.lines, self.size)

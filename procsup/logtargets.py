"""Where each captured stream goes (between the process layer and the OS resources): a log file
(`logs`), procsupd's own stdout or stderr (`out_file`/`error_file = "-"`, `outlets`), or the
systemd journal (`"journal"`, `journal`); and how its lines are framed on the way
(`log_format = "json"`, the `<app>:<i> | ` label of the `"-"` target).

`Targets.acquire` gives the process layer one `pipes.Sink` per stream of a run and
`Targets.release` takes it back. A text log file is the shared `logs.LogSink` itself (the fast
path is unchanged); everything else is a small per-stream `Framed` or `journal.JournalTarget`
writing into a shared file sink or outlet, so the lines of many instances meet only in that
one writer, whole. Everything runs on the loop thread.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import select
import sys
import threading
from collections.abc import Callable, Mapping

from procsup import journal, logs, outlets, paths
from procsup.drops import LogHealth
from procsup.model import JOURNAL, STDIO, AppSpec
from procsup.pipes import Valve

__all__ = ["DaemonLogHandler", "Framed", "Target", "Targets", "json_line"]

_NL = b"\n"
#: The fd and the name of procsupd's stream that a "-" target of each stream writes to.
_STDIO = {"out": (1, "stdout"), "err": (2, "stderr")}

Report = Callable[[int, str], None]


def json_line(time: str, app: str, index: int, stream: str, line: bytes) -> bytes:
    """One line as `log_format = "json"` writes it: a JSON object and a newline. The message
    is the line without its newline, decoded as UTF-8 (bad bytes become U+FFFD)."""
    return json.dumps({"time": time, "app": app, "instance": index, "stream": stream,
                       "message": line.decode("utf-8", "replace")},
                      ensure_ascii=False).encode("utf-8") + _NL


def _now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="microseconds")


class Framed:
    """One captured stream, framed and written into a shared file sink or outlet: JSON objects
    (`json`), or each line after the date prefix (`date_format`) and `label`. A `pipes.Sink`;
    it has the valve and the health of what it writes into."""

    date_format: str | None = None  # a reader hands raw lines; this adds the prefix itself

    def __init__(self, into: logs.LogSink | outlets.Outlet, *, app: str, index: int,
                 stream: str, json_format: bool, date_format: str | None, label: bytes = b""
                 ) -> None:
        self.into = into
        self._put = into.write if isinstance(into, logs.LogSink) else into.put
        self.app, self.index, self.stream = app, index, stream
        self.json_format = json_format
        self.prefix_format = date_format
        self.label = label

    @property
    def valve(self) -> Valve | None:
        return self.into.valve if isinstance(self.into, outlets.Outlet) else None

    @property
    def health(self) -> LogHealth | None:
        return self.into.health

    def write(self, data: bytes | memoryview, head: bytes = b"") -> None:
        """Frame `head + data` (whole lines) and write it in one piece (one timestamp per
        call, as a log file does)."""
        chunk = head + bytes(data) if head else bytes(data)
        if not chunk:
            return
        if chunk[-1] != 10:
            chunk += _NL
        if self.json_format:
            now = _now_iso()
            lines = chunk.split(_NL)[:-1]
            self._put(b"".join(json_line(now, self.app, self.index, self.stream, line)
                               for line in lines))
            return
        prefix = self.label
        if self.prefix_format is not None:
            prefix = (datetime.datetime.now().astimezone().strftime(self.prefix_format)
                      .encode("utf-8", "replace") + b" " + prefix)
        if prefix:
            body = chunk.replace(_NL, _NL + prefix)  # one too many after the last line
            chunk = prefix + body[: len(body) - len(prefix)]
        self._put(chunk)


#: What `Targets.acquire` hands out: a sink for one stream (`pipes.Sink`, with `health`).
Target = logs.LogSink | Framed | journal.JournalTarget


class Targets:
    """The sinks of every captured stream: log files by path (`sinks`, reference-counted),
    and the outlets, made at first use and kept until `close`: one per distinct file of
    procsupd's stdout and stderr, and the journal's socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sinks: logs.LogSinks,
                 report: Report, environ: Mapping[str, str]) -> None:
        self.loop = loop
        self.sinks = sinks
        self._report = report
        self._journal_path = paths.journal_socket(environ)
        self._stdio: dict[tuple[int, int], outlets.StdioOutlet] = {}
        self._journal: journal.JournalOutlet | None = None

    def acquire(self, spec: AppSpec, index: int, stream: str, path: str) -> Target:
        """The sink for stream `stream` ("out"/"err") of instance `index` of `spec`, whose
        target is `path`. Raises OSError (a file, or an fd, that cannot be opened) and
        ValueError (a date format strftime rejects)."""
        json_format = spec.log_format == "json"
        if path == JOURNAL:
            return journal.JournalTarget(self._journal_outlet(), spec.name, index, stream)
        if path == STDIO:
            if spec.log_date_format is not None:
                datetime.datetime.now().strftime(spec.log_date_format)
            return Framed(self._stdio_outlet(stream), app=spec.name, index=index,
                          stream=stream, json_format=json_format,
                          date_format=None if json_format else spec.log_date_format,
                          label=b"" if json_format else f"{spec.name}:{index} | ".encode())
        sink = self.sinks.acquire(
            path, date_format=None if json_format else spec.log_date_format,
            max_size=spec.log_max_size, retain=spec.log_retain)
        if not json_format:
            return sink
        return Framed(sink, app=spec.name, index=index, stream=stream, json_format=True,
                      date_format=None)

    def release(self, target: Target) -> None:
        """The stream is done with `target`: a log file is let go (the last one closes it);
        outlets stay for the next run."""
        if isinstance(target, logs.LogSink):
            self.sinks.release(target)
        elif isinstance(target, Framed) and isinstance(target.into, logs.LogSink):
            self.sinks.release(target.into)

    def close(self) -> None:
        """Daemon exit: flush and close every outlet (each waits at most
        outlets.FLUSH_TIMEOUT for its reader)."""
        stdio, self._stdio = self._stdio, {}  # (what a close reports goes to stderr directly)
        for outlet in {id(o): o for o in stdio.values()}.values():
            outlet.close()
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def flush(self) -> None:
        """Before a re-exec: write what the outlets hold (each waits at most
        outlets.FLUSH_TIMEOUT for its reader); what cannot be written is lost with the image."""
        for outlet in {id(o): o for o in self._stdio.values()}.values():
            outlet.flush()
        if self._journal is not None:
            self._journal.flush()

    def stderr_outlet(self) -> outlets.StdioOutlet | None:
        """The outlet on the file procsupd's stderr is open on, if apps write there."""
        key = outlets.stdio_key(2)
        return None if key is None else self._stdio.get(key)

    def _stdio_outlet(self, stream: str) -> outlets.StdioOutlet:
        fd, name = _STDIO[stream]
        key = outlets.stdio_key(fd)
        if key is None:
            raise OSError(f"procsupd's {name} is closed")
        outlet = self._stdio.get(key)
        if outlet is None:
            outlet = outlets.StdioOutlet(self.loop, fd, name, self._report)
            self._stdio[key] = outlet
        return outlet

    def _journal_outlet(self) -> journal.JournalOutlet:
        if self._journal is None:
            self._journal = journal.JournalOutlet(self.loop, self._journal_path, self._report)
        return self._journal


class DaemonLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """procsupd's own log on its stderr (-n). While apps write to that file too (`"-"`, or
    procsupd's stdout when it is the same file as its stderr), a line logged on the loop
    thread joins their outlet's queue instead of a blocking write(2): a stalled reader must
    not stall the loop through a daemon log line either, and the line cannot land inside one
    of theirs. Elsewhere (other threads, before the loop, after the outlets closed) it is
    written to stderr as usual, except that once apps have shared that file a line waits at
    most STALL_WAIT seconds for room in it, and is dropped after that: a reader that stopped
    must not hold procsupd's exit (or a worker thread) forever. Such a line (a record, with
    its traceback) is one write(2) of its own, so that it cannot be cut by the outlet writing
    the apps' lines from the loop meanwhile (a file shares its offset with the outlet:
    `outlets.StdioOutlet`)."""

    STALL_WAIT = 1.0

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.targets: Targets | None = None
        self._thread: int | None = None
        self._shared = False  # apps have written to our stderr's file through an outlet

    def route(self, targets: Targets | None) -> None:
        """Send the loop thread's lines (the caller's thread) through `targets` from now on;
        None: write them to stderr again."""
        self.targets = targets
        self._thread = threading.get_ident() if targets is not None else None

    def emit(self, record: logging.LogRecord) -> None:
        outlet = (self.targets.stderr_outlet() if self.targets is not None
                  and threading.get_ident() == self._thread else None)
        if outlet is None:
            if self._shared and not select.select([], [self.stream], [], self.STALL_WAIT)[1]:
                return  # stalled: dropped rather than waited for
            self._write_whole(record)
            return
        self._shared = True
        try:
            outlet.put((self.format(record) + "\n").encode("utf-8", "replace"))
        except Exception:
            self.handleError(record)

    def _write_whole(self, record: logging.LogRecord) -> None:
        """`record` to stderr in one write(2) (the handler's lock is held: one at a time)."""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
            super().emit(record)
            return
        try:
            data = memoryview((self.format(record) + self.terminator).encode("utf-8", "replace"))
            self.stream.flush()  # what was written through the stream before goes first
            while data:
                data = data[os.write(fd, data):]
        except Exception:
            self.handleError(record)

"""Watch the config files for changes and report them on the event loop (layer 2).

The only module that uses watchdog; imports only `globs` from procsup. `ConfigWatch` watches the
*directories* that hold the config files (non-recursively), because editors save in ways that a
watch on the file itself misses: write a temporary file and rename it over the original (the
original inode, and a watch on it, are gone), truncate and rewrite, delete and create. Every
event is handed to the loop as is (STYLE.md §2: the watchdog thread only enqueues) and filtered
there against what is watched: an exact file (main config and included files) or an include
glob (with the rules of `globs`, which config.py uses too: `*` and `?` stay within one name and
skip names starting with "."; `**` spans directories, following no symlink loop). Other names
in the same directories (editor swap and backup files: `.apps.toml.swp`, `apps.toml~`, `4913`)
are ignored.

`on_change(path)` is called, on the loop, once per relevant path of each event: created,
modified (also attribute changes such as `touch`), closed after writing, deleted, and both ends
of a rename. Opening or reading a file is not a change (newer watchdog versions report those
too; ignoring them matters, since loading the config reads it). There is no debouncing here: one
save usually yields several calls, and the caller (the supervisor) debounces.

Directories come and go: a directory that does not exist is watched through its nearest
existing ancestor, so its creation is reported (as `on_change(<the directory>)`) and it is
watched from then on without another `watch()` call. A watched directory that is deleted or
renamed away is reported the same way (the files it held may not be reported one by one) and
watched again when it reappears. A directory named by a glob with wildcards in its directory
part (`conf.d/*/app.toml`, `apps.d/**/*.toml`) is found when `watch()` runs and again whenever
a directory below the glob's fixed prefix appears.

`AppWatch` is the other user of watchdog: an app's `watch` paths, recursively, for restarting
the app when its files change (see its docstring).

Watchdog >= 2.2.1 (Debian 12): only `Observer`, `FileSystemEventHandler`, `schedule(handler,
path, recursive=...)` and `unschedule(watch)` are used. Event paths may be str or bytes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from procsup import globs

#: Event types that mean a file's content or presence may have changed. Not "opened" nor
#: "closed_no_write" (watchdog >= 5 reports reads).
_CHANGES = frozenset({"created", "modified", "attrib", "closed", "deleted", "moved"})
#: Event types that change which directories exist.
_STRUCTURE = frozenset({"created", "deleted", "moved"})
_MAGIC = re.compile(r"[*?[]")
#: Bound on close(). stop() takes milliseconds in practice (watchdog 2.2.1 and 7.x).
_JOIN_TIMEOUT = 5.0


class _Handler(FileSystemEventHandler):  # type: ignore[misc, unused-ignore]  # untyped in 2.x
    """Runs on watchdog's thread: hands every event to the loop, decides nothing."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, receive: Callable[[FileSystemEvent], None]
    ) -> None:
        super().__init__()
        self._loop = loop
        self._receive = receive

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._loop.call_soon_threadsafe(self._receive, event)


class ConfigWatch:
    """Reports changes of the config files to `on_change(path)`, called on `loop`.

    Create it on the loop's thread after daemonizing (it starts a thread on the first
    `watch()`); call `watch()` and `close()` from the loop's thread too, and `close()` before
    the loop is closed: the watchdog thread must not outlive the loop it posts to.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_change: Callable[[str], None]
    ) -> None:
        self._loop = loop
        self._on_change = on_change
        self._handler = _Handler(loop, self._receive)
        self._observer: Any = None  # started by the first watch()
        self._scheduled: dict[str, Any] = {}  # directory -> watchdog ObservedWatch
        self._files: frozenset[str] = frozenset()
        self._globs: tuple[tuple[str, ...], ...] = ()  # absolute patterns, split at "/"
        self._wanted: frozenset[str] = frozenset()  # directories that hold what is watched
        self._structure: frozenset[str] = frozenset()  # _wanted and all their ancestors
        self._trees: tuple[str, ...] = ()  # fixed prefixes of globs with wildcard directories
        self._closed = False

    @property
    def directories(self) -> frozenset[str]:
        """The directories observed now (each non-recursively)."""
        return frozenset(self._scheduled)

    def watch(self, files: Iterable[str], globs: Iterable[str]) -> None:
        """Watch exactly `files` (absolute: the main config and the included files) and any file
        matching one of `globs` (absolute include patterns, e.g. /etc/procsup/apps.d/*.toml),
        replacing what was watched before. Directories no longer needed stop being observed.
        Raises RuntimeError after close(), OSError when the OS refuses a watch (e.g. the
        inotify watch limit), never for a directory that does not exist.
        """
        if self._closed:
            raise RuntimeError("ConfigWatch is closed")
        self._files = frozenset(_normalize(f) for f in files)
        patterns = [_normalize(g) for g in globs]
        self._globs = tuple(tuple(p.split("/")) for p in patterns)
        self._trees = tuple(t for t in (_fixed_prefix(p) for p in patterns) if t is not None)
        self._find_directories()
        if self._observer is None:
            self._observer = Observer()
            self._observer.daemon = True
            # Started before any schedule(): watchdog 2.x starts (and so checks) an emitter
            # in schedule() only when the observer is alive.
            self._observer.start()
        self._reschedule()

    def close(self) -> None:
        """Stop observing and join the watchdog thread (bounded). Idempotent; events still
        queued on the loop are dropped."""
        self._closed = True
        self._scheduled.clear()
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()  # unschedules (and joins) every emitter
            observer.join(_JOIN_TIMEOUT)

    # -- on the loop ------------------------------------------------------------------------

    def _receive(self, event: FileSystemEvent) -> None:
        if self._closed or event.event_type not in _CHANGES:
            return
        paths = [event.src_path]
        if event.event_type == "moved":
            paths.append(getattr(event, "dest_path", ""))
        hits: list[str] = []
        for index, raw in enumerate(paths):
            if not raw:  # watchdog reports "" for the unknown end of an unpaired move
                continue
            path = _normalize(os.fsdecode(raw))
            if event.is_directory:
                if event.event_type not in _STRUCTURE or not self._is_structure(path):
                    continue  # a directory's "modified" is any change of its entries
                if index == 0 and event.event_type != "created":  # gone from `path`
                    self._drop(path)
                self._find_directories()  # a glob's directories may have come or gone
                self._reschedule()
            elif not (path in self._files or any(_glob_match(path, g) for g in self._globs)):
                continue
            if path not in hits:
                hits.append(path)
        for path in hits:
            self._on_change(path)

    def _is_structure(self, path: str) -> bool:
        return path in self._structure or any(_below(path, t) for t in self._trees)

    def _find_directories(self) -> None:
        wanted = {os.path.dirname(f) for f in self._files}
        for parts in self._globs:
            wanted |= _glob_directories("/".join(parts))
        self._wanted = frozenset(wanted)
        self._structure = frozenset(a for d in wanted for a in _self_and_ancestors(d))

    def _drop(self, gone: str) -> None:
        """Forget the watches on `gone` and below: their inotify watch died with the directory,
        or (renamed) follows it elsewhere and would report wrong paths."""
        for directory in [d for d in self._scheduled if d == gone or _below(d, gone)]:
            self._unschedule(directory)

    def _reschedule(self) -> None:
        """Observe each wanted directory, or its nearest existing ancestor while it is missing."""
        targets = {_existing(d) for d in self._wanted}
        for directory in [d for d in self._scheduled if d not in targets]:
            self._unschedule(directory)
        for directory in sorted(targets - self._scheduled.keys()):
            try:
                self._scheduled[directory] = self._observer.schedule(
                    self._handler, directory, recursive=False
                )
            except (FileNotFoundError, NotADirectoryError):
                pass  # removed since _existing() looked; its deletion event comes next

    def _unschedule(self, directory: str) -> None:
        watch = self._scheduled.pop(directory)
        try:
            self._observer.unschedule(watch)
        except KeyError:  # watchdog already dropped it
            pass


#: Events handed to the loop per callback: a `git checkout` of 10,000 files makes ~80,000
#: events, and one callback taking them all would hold the loop (control requests) for long.
_BATCH = 1024
#: Directory events that are never a change of their own (an entry of it changed: that entry's
#: own event tells).
_DIR_NOISE = frozenset({"modified", "attrib", "closed"})


class _BatchHandler(FileSystemEventHandler):  # type: ignore[misc, unused-ignore]
    """Runs on watchdog's thread: queues events, and wakes the loop once per batch (at most
    `_BATCH` events per loop callback). Only event *types* that can never be a change are
    dropped here; which paths count is decided on the loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, drain: Callable[[list[FileSystemEvent]], None]
    ) -> None:
        super().__init__()
        self._loop = loop
        self._drain = drain
        self._lock = threading.Lock()
        self._queue: list[FileSystemEvent] = []

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind not in _CHANGES or (event.is_directory and kind in _DIR_NOISE):
            return
        with self._lock:
            self._queue.append(event)
            first = len(self._queue) == 1
        if first:
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:  # on the loop
        with self._lock:
            batch, self._queue = self._queue[:_BATCH], self._queue[_BATCH:]
            more = bool(self._queue)
        if more:  # the rest after whatever else waits on the loop
            self._loop.call_soon(self._flush)
        self._drain(batch)


@dataclass(frozen=True)
class _Watched:
    """What one app watches, as given to `AppWatch.watch`."""

    roots: tuple[str, ...]
    ignore: tuple[str, ...]
    own_files: frozenset[str]


class AppWatch:
    """Calls `on_change(key, path)` on the loop once per burst of changes below an app's
    `watch` paths, `settle` seconds after the last change of the burst (debounced): a
    `git checkout` or an editor's save restarts the app once.

    A change is a file or directory created, deleted, moved, or a file modified or closed
    after writing; a directory's own "modified" (its entries changed) and opening or reading
    a file are not. Not a change either: a path matched by an `ignore` glob (a glob without
    "/" against each name of the path below the root, e.g. `*.log`, `.git`, `node_modules`;
    a glob with "/" against the whole path relative to the root, e.g. `static/*.css`), and
    procsup's own files (`own_files`: log files, the daemon's pidfile, socket and instance
    record), with their rotated `<file>.N` siblings and the `.<file>.<random>.tmp` files they
    are written through: a restart writes them, so counting them would restart forever.

    Directories are watched recursively (one inotify watch per directory, not per file); a
    root that is a file is watched through its directory. Watches are added and removed on
    one worker thread, in the order asked (so a quick re-watch cannot undo itself), so that a
    tree of many thousands of files does not hold up the loop. A watch the OS refuses (the
    inotify limits) is reported to `on_error(key, message)` on the loop, and the app is
    forgotten so that the next `watch()` tries again. Create, use and close it on the loop's
    thread; `close()` before the loop closes.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[str, str], None],
        *,
        settle: float = 0.5,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self._loop = loop
        self._on_change = on_change
        self._on_error = on_error
        self._settle = settle
        self._observer: Any = None
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        # Owned by the worker thread alone: which app handlers use each watchdog watch (watches
        # are keyed by path, so two apps watching one directory share one).
        self._users: dict[Any, set[_BatchHandler]] = {}
        self._watches: dict[_BatchHandler, list[Any]] = {}
        self._apps: dict[str, _Watched] = {}
        self._handlers: dict[str, _BatchHandler] = {}
        self._scheduled: set[str] = set()  # keys whose watches are all in place
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._first: dict[str, str] = {}  # key -> first changed path of the pending burst
        self._generation: dict[str, int] = {}
        # key -> path -> whether a change of it counts (the same files change over and over in
        # a burst); reset with the app's watch and when it grows large.
        self._verdicts: dict[str, dict[str, bool]] = {}
        self._closed = False

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self._apps)

    def watch(
        self, key: str, roots: Iterable[str], ignore: Iterable[str], own_files: Iterable[str]
    ) -> list[str]:
        """Watch `roots` (absolute) for `key`, replacing what `key` watched before; returns the
        roots that do not exist (not watched). Raises RuntimeError after close()."""
        if self._closed:
            raise RuntimeError("AppWatch is closed")
        spec = _Watched(
            tuple(_normalize(r) for r in roots),
            tuple(ignore),
            frozenset(_normalize(f) for f in own_files),
        )
        if self._apps.get(key) == spec:
            return [r for r in spec.roots if not os.path.exists(r)]
        self.unwatch(key)
        self._apps[key] = spec
        generation = self._generation[key] = self._generation.get(key, 0) + 1
        handler = self._handlers[key] = _BatchHandler(
            self._loop, lambda batch: self._receive(key, generation, batch)
        )
        if self._observer is None:
            self._observer = Observer()
            self._observer.daemon = True
            self._observer.start()
            self._worker = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="procsup-watch"
            )
        targets = []
        missing = []
        for root in spec.roots:
            if os.path.isdir(root):
                targets.append((root, True))
            elif os.path.exists(root):
                targets.append((os.path.dirname(root), False))
            else:
                missing.append(root)

        def attached(future: asyncio.Future[list[str]]) -> None:
            if future.cancelled() or self._closed or self._generation.get(key) != generation:
                return
            errors = future.result() if future.exception() is None else [str(future.exception())]
            if errors:
                self._apps.pop(key, None)  # so that the next watch() tries again
                if self._on_error is not None:
                    self._on_error(key, "; ".join(errors))
                return
            self._scheduled.add(key)

        assert self._worker is not None
        observer = self._observer
        self._loop.run_in_executor(
            self._worker, self._attach, observer, handler, targets
        ).add_done_callback(attached)
        return missing

    def unwatch(self, key: str) -> None:
        """Stop watching for `key` and drop a pending change. Idempotent."""
        self._apps.pop(key, None)
        self._scheduled.discard(key)
        self._verdicts.pop(key, None)
        self._generation[key] = self._generation.get(key, 0) + 1
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._first.pop(key, None)
        handler = self._handlers.pop(key, None)
        if handler is not None and self._worker is not None and not self._closed:
            self._loop.run_in_executor(self._worker, self._detach, self._observer, handler)

    def close(self) -> None:
        """Stop observing, join the watchdog thread (bounded), drop pending changes."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._apps.clear()
        self._scheduled.clear()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=False, cancel_futures=True)
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(_JOIN_TIMEOUT)

    # -- on the worker thread ---------------------------------------------------------------

    def _attach(
        self, observer: Any, handler: _BatchHandler, targets: list[tuple[str, bool]]
    ) -> list[str]:
        """Schedule `handler` on each target (walking a tree takes a while); the errors."""
        errors = []
        watches = self._watches.setdefault(handler, [])
        for path, recursive in targets:
            try:
                w = observer.schedule(handler, path, recursive=recursive)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed meanwhile
            except Exception as exc:  # the OS's refusal (inotify limits), reported as data
                errors.append(f"cannot watch {path}: {exc}")
                continue
            watches.append(w)
            self._users.setdefault(w, set()).add(handler)
        return errors

    def _detach(self, observer: Any, handler: _BatchHandler) -> None:
        """Detach `handler` from its watches; unschedule a watch no other app uses."""
        for w in self._watches.pop(handler, []):
            users = self._users.get(w, set())
            users.discard(handler)
            try:
                if users:
                    observer.remove_handler_for_watch(handler, w)
                else:
                    self._users.pop(w, None)
                    observer.unschedule(w)
            except (KeyError, ValueError):  # already gone (watchdog drops deleted roots)
                pass

    # -- on the loop ------------------------------------------------------------------------

    def _receive(self, key: str, generation: int, batch: list[FileSystemEvent]) -> None:
        """One batch: if any event in it counts, the burst goes on (the debounce is re-armed
        once per batch, from now). The scan stops at the first event that counts; events of
        ignored paths are judged once per path."""
        spec = self._apps.get(key)
        if self._closed or spec is None or self._generation.get(key) != generation:
            return
        verdicts = self._verdicts.setdefault(key, {})
        if len(verdicts) > 65536:
            verdicts.clear()
        for event in batch:
            for raw in (event.src_path, getattr(event, "dest_path", "")):
                if not raw:  # "" for the unknown end of a move; non-moves have no dest
                    continue
                path = os.fsdecode(raw)
                counts = verdicts.get(path)
                if counts is None:
                    counts = verdicts[path] = _counts(_normalize(path), spec)
                if counts:
                    self._changed(key, _normalize(path))
                    return

    def _changed(self, key: str, path: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._first.setdefault(key, path)
        self._timers[key] = self._loop.call_later(self._settle, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        path = self._first.pop(key, "")
        if key in self._apps:
            self._on_change(key, path)


def _counts(path: str, spec: _Watched) -> bool:
    """Whether a change of `path` counts for an app watching `spec` (pure)."""
    if _own(path, spec.own_files):
        return False
    for root in spec.roots:
        if path == root:
            rel = os.path.basename(root)
        elif _below(path, root):
            rel = path[len(root.rstrip("/")) + 1 :]
        else:
            continue
        if not _ignored(rel, spec.ignore):
            return True
    return False


def _own(path: str, own: frozenset[str]) -> bool:
    """`path` is one of `own`, a rotated `<own>.N`, or a `.<own>.<random>.tmp` beside it."""
    if path in own:
        return True
    base, dot, suffix = path.rpartition(".")
    if dot and suffix.isdigit() and base in own:
        return True
    head, _, name = path.rpartition("/")
    if name.startswith(".") and name.endswith(".tmp"):
        stem = name[1 : -len(".tmp")].rpartition(".")[0]
        return bool(stem) and f"{head}/{stem}" in own
    return False


def _ignored(rel: str, patterns: Iterable[str]) -> bool:
    """`rel` is a path relative to the watched root. A pattern without "/" is matched against
    each name of it; one with "/" name by name against its first names (anchored at the root,
    and a wildcard stays within one name, as in .gitignore), so it also covers what is below."""
    names = rel.split("/")
    for raw in patterns:
        pattern = raw.strip("/")  # "/.git/" or "build/" name the same thing as ".git", "build"
        if "/" in pattern:
            parts = pattern.split("/")
            if len(parts) <= len(names) and all(
                fnmatch.fnmatchcase(n, p) for n, p in zip(names, parts, strict=False)
            ):
                return True
        elif any(fnmatch.fnmatchcase(name, pattern) for name in names):
            return True
    return False


# -- paths and globs (pure) ----------------------------------------------------------------------


def _normalize(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _below(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/") and path != directory


def _self_and_ancestors(path: str) -> list[str]:
    out = [path]
    while (parent := os.path.dirname(path)) != path:
        out.append(parent)
        path = parent
    return out


def _existing(directory: str) -> str:
    while not os.path.isdir(directory) and directory != "/":
        directory = os.path.dirname(directory)
    return directory


def _fixed_prefix(pattern: str) -> str | None:
    """For a glob whose directories are not fixed (a wildcard before the last name, or `**`),
    the directory before the first wildcard; None when only the last name has wildcards."""
    parts = pattern.split("/")
    magic = [i for i, part in enumerate(parts) if _MAGIC.search(part)]
    if not magic or ("**" not in parts and magic[0] == len(parts) - 1):
        return None
    return "/".join(parts[: magic[0]]) or "/"


def _glob_directories(pattern: str) -> set[str]:
    """The directories that may hold files matching `pattern`, as they exist now (plus the
    fixed directory of a pattern, which may not exist yet)."""
    prefix = _fixed_prefix(pattern)
    if prefix is None:
        return {os.path.dirname(pattern)}
    found = {prefix}
    parts = pattern.split("/")
    # globs, as config.py: no symlink loop followed, bounded; past a bound, the config load
    # reports it and what was found until then is watched.
    expander = globs.Expander()
    candidates: list[str] = []
    try:
        if "**" in parts:
            candidates = expander.directories(prefix)
        else:  # every level of the directory part, so that a new subdirectory is watched too
            start = len(prefix.rstrip("/").split("/"))
            for end in range(start + 1, len(parts)):
                candidates.extend(expander.expand("/".join(parts[:end])))
    except globs.LimitExceeded as exc:
        candidates.extend(exc.partial)
    found.update(os.path.normpath(c) for c in candidates if os.path.isdir(c))
    return found


def _glob_match(path: str, pattern: tuple[str, ...]) -> bool:
    """Whether `globs.Expander.expand(pattern)` could return `path` (both absolute and
    normalized, split at "/" for the pattern)."""
    return _match_parts(tuple(path.split("/")), pattern)


def _match_parts(names: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    if not pattern:
        return not names
    head, rest = pattern[0], pattern[1:]
    if head == "**":  # zero or more names, none hidden
        for skip in range(len(names) + 1):
            if skip and names[skip - 1].startswith("."):
                return False
            if _match_parts(names[skip:], rest):
                return True
        return False
    if not names:
        return False
    name = names[0]
    if not _MAGIC.search(head):
        return name == head and _match_parts(names[1:], rest)
    if name.startswith(".") and not head.startswith("."):
        return False  # glob's wildcards skip hidden names
    return fnmatch.fnmatchcase(name, head) and _match_parts(names[1:], rest)

"""Include globs expanded within bounds, never following a symlink loop (layer 1).

`glob.glob(pattern, recursive=True)` follows every link to a directory: two links `d/a -> .`
and `d/b -> .` make `d/**` grow exponentially (the kernel stops a path only at 40 links), and
the daemon that expands it stops answering. `Expander` reads the same pattern language, the one
docs/config.md promises for `include`:

- the pattern is split at "/"; a name without `*`, `?` or `[` is taken literally;
- `*`, `?` and `[...]` match within one name (`fnmatch.fnmatchcase`), and skip names starting
  with "." unless the pattern's name starts with "." too;
- a name that is exactly `**` matches zero or more directories, none of them hidden; as the last
  name it matches everything below, files too;
- links are followed, matches are returned sorted, each path once.

What it does differently, on purpose:

- a link to a directory that is already on the path being searched (an ancestor, or the
  directory itself) is a *loop*: it is not followed, and it is recorded in `loops` (the config
  loader turns that into one warning per include);
- below one `**`, a directory reached a second time through another link (same st_dev and
  st_ino) is not searched again: its files would be the same files;
- bounds (`Limits`): how deep below a `**` it goes, how many paths it returns, how many
  directories it lists. Exceeding one raises `LimitExceeded` saying which, with what was found
  until then (the config watch uses that part; the config loader refuses the config).

It reads directories and stats entries; it opens no file. Imports nothing from procsup, so the
config loader (layer 1) and the config watch (layer 2) share it.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass

_MAGIC = re.compile(r"[*?[]")

#: (st_dev, st_ino): a directory's identity, whatever path reached it.
_Key = tuple[int, int]


@dataclass(frozen=True)
class Limits:
    """Bounds of one `Expander`, summed over the patterns it expands."""

    #: Directories below the directory a `**` starts from (`a/**` reaches `a/1/2/.../16`).
    depth: int = 16
    #: Paths matched (files, and the directories a pattern matches).
    files: int = 1000
    #: Directories listed: the cost of the walk, whatever it matches.
    directories: int = 10_000


LIMITS = Limits()


class LimitExceeded(Exception):
    """A pattern went past a bound. `message` says which and where (without the pattern: the
    caller names it); `partial` is what was matched before (sorted)."""

    def __init__(self, message: str, partial: list[str]) -> None:
        super().__init__(message)
        self.message = message
        self.partial = partial


@dataclass(frozen=True)
class Loop:
    """A link (`link`, a path as the walk reached it) back to `target`, a directory already on
    that path: not followed."""

    link: str
    target: str


def _has_magic(name: str) -> bool:
    return _MAGIC.search(name) is not None


class Expander:
    """Expands patterns (absolute, or relative to the working directory) under one shared set of
    `limits`; `loops` collects the links it did not follow, each once."""

    def __init__(self, limits: Limits = LIMITS) -> None:
        self.limits = limits
        self.loops: list[Loop] = []
        self._loop_links: set[str] = set()
        self._matched = 0
        self._listed = 0
        self._out: set[str] = set()

    def expand(self, pattern: str) -> list[str]:
        """The paths matching `pattern`, sorted. Raises LimitExceeded."""
        pattern = os.path.normpath(os.path.abspath(pattern))
        self._out = set()
        names = tuple(n for n in pattern.split("/") if n)
        try:
            root = os.stat("/")
            self._match("/", ((root.st_dev, root.st_ino),), names)
        except LimitExceeded as exc:
            exc.partial = sorted(self._out)
            raise
        return sorted(self._out)

    def directories(self, top: str) -> list[str]:
        """`top` and the directories below it, as `top/**` reaches them (hidden ones left out),
        sorted; without the bound on matches (the config watch watches directories that hold
        no included file too). Raises LimitExceeded."""
        top = os.path.normpath(os.path.abspath(top))
        chain: list[_Key] = []
        names = [n for n in top.split("/") if n]
        for end in range(len(names) + 1):
            key = _directory_key("/" + "/".join(names[:end]))
            if key is None:
                return []
            chain.append(key)
        found: list[str] = []
        try:
            for directory, _ in self._tree(top, tuple(chain), files=False):
                found.append(directory)
        except LimitExceeded as exc:
            exc.partial = sorted(found)
            raise
        return sorted(found)

    # -- the walk --------------------------------------------------------------------------

    def _add(self, path: str) -> None:
        if path in self._out:
            return
        self._matched += 1
        if self._matched > self.limits.files:
            raise LimitExceeded(f"matches more than {self.limits.files} files", [])
        self._out.add(path)

    def _match(self, directory: str, chain: tuple[_Key, ...], names: tuple[str, ...]) -> None:
        """Match `names` below `directory`, an existing directory; `chain` holds the identity
        of every directory on the path searched, `directory`'s last."""
        if not names:
            self._add(directory)
            return
        head, rest = names[0], names[1:]
        if head == "**":
            for below, below_chain in self._tree(directory, chain, files=not rest):
                if rest:
                    self._match(below, below_chain, rest)
                else:
                    self._add(below)
            return
        if not _has_magic(head):
            # Written out by the user: followed even when it leads back (the pattern is finite).
            path = os.path.join(directory, head)
            if not rest:
                if os.path.lexists(path):
                    self._add(path)
                return
            key = _directory_key(path)
            if key is not None:
                self._match(path, (*chain, key), rest)
            return
        for entry in self._list(directory):
            if entry.name.startswith(".") and not head.startswith("."):
                continue
            if not fnmatch.fnmatchcase(entry.name, head):
                continue
            if not rest:
                self._add(entry.path)
                continue
            key = _entry_key(entry)
            if key is None:
                continue
            if key in chain:
                self._loop(entry.path, chain.index(key), directory)
                continue
            self._match(entry.path, (*chain, key), rest)

    def _tree(
        self, top: str, chain: tuple[_Key, ...], *, files: bool
    ) -> Iterator[tuple[str, tuple[_Key, ...]]]:
        """`top` and every directory below it that is not hidden (with `files`, the files too),
        depth first in sorted order, each directory once, each with its chain."""
        yield top, chain
        seen: set[_Key] = set()  # directories searched by this `**`
        start = len(chain)
        stack: list[tuple[str, tuple[_Key, ...]]] = [(top, chain)]
        while stack:
            directory, dir_chain = stack.pop()
            subdirectories: list[tuple[str, tuple[_Key, ...]]] = []
            for entry in self._list(directory):
                if entry.name.startswith("."):
                    continue
                key = _entry_key(entry)
                if key is None:
                    if files:
                        yield entry.path, dir_chain
                    continue
                if key in dir_chain:
                    self._loop(entry.path, dir_chain.index(key), directory)
                    continue
                if key in seen:  # another link to a directory this `**` searched
                    continue
                seen.add(key)
                if len(dir_chain) - start + 1 > self.limits.depth:
                    raise LimitExceeded(
                        f"goes more than {self.limits.depth} directories deep below {top} "
                        f"(at {entry.path})", [])
                subdirectories.append((entry.path, (*dir_chain, key)))
            yield from subdirectories
            stack.extend(reversed(subdirectories))

    def _list(self, directory: str) -> list[os.DirEntry[str]]:
        self._listed += 1
        if self._listed > self.limits.directories:
            raise LimitExceeded(
                f"searches more than {self.limits.directories} directories", [])
        try:
            with os.scandir(directory) as it:
                return sorted(it, key=lambda e: e.name)  # loops are found in a stable order
        except OSError:  # gone, not a directory, no permission: nothing there, as glob says
            return []

    def _loop(self, link: str, index: int, directory: str) -> None:
        """Record the link `link` in `directory` back to the directory at `index` of its chain
        (the chain holds one identity per name of the path, the root's first)."""
        if link in self._loop_links:
            return
        self._loop_links.add(link)
        target = "/".join(directory.split("/")[: index + 1]) or "/"
        self.loops.append(Loop(link, target))


def _entry_key(entry: os.DirEntry[str]) -> _Key | None:
    """The identity of the directory `entry` is or links to; None for anything else."""
    try:
        if not entry.is_dir():
            return None
        st = entry.stat()
    except OSError:  # a dangling link, or gone since it was listed
        return None
    return st.st_dev, st.st_ino


def _directory_key(path: str) -> _Key | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None

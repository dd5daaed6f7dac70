"""Line numbers of tables and keys in TOML text, which tomllib does not give (layer 1 leaf).

`config` reports every problem at file:line with it. Pure: text in, numbers out; it imports
nothing from procsup.
"""

from __future__ import annotations

import re

__all__ = ["Locator", "parse_key"]

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
#: A table header at the start of a line (not an array of tables: `[[`).
_HEADER_RE = re.compile(r"^[ \t]*\[(?!\[)", re.MULTILINE)


class Locator:
    """Line numbers of tables and keys in TOML text (tomllib gives none).

    Records, for each key path (("apps", "web", "command")), the first line that defines it or,
    through a dotted key or header, one of its children. `line()` falls back to the longest
    recorded prefix: a key inside an inline table is reported at the line of that table.

    Nothing is scanned until a line is asked for (most loads report no problem): `line()`
    scans every line, `table_line()` only the table headers where it can.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._lines: dict[tuple[str, ...], int] = {}
        self._scanned = False
        self._headers: dict[tuple[str, ...], int] | None = None

    def table_line(self, *path: str) -> int | None:
        """The line of the header `[path]`, else what `line(*path)` says. A scan of the header
        lines alone (a sixth of `line`'s work on an apps file), unless a multi-line string
        could hold a line that looks like a header."""
        if self._headers is None:
            # (decided once: with a multi-line string no header is trusted, all go to `line`)
            multiline = '"""' in self._text or "'''" in self._text
            self._headers = {} if multiline else self._scan_headers()
        found = self._headers.get(path)
        return found if found is not None else self.line(*path)

    def _scan_headers(self) -> dict[tuple[str, ...], int]:
        headers: dict[tuple[str, ...], int] = {}
        number, last = 1, 0
        for m in _HEADER_RE.finditer(self._text):
            number += self._text.count("\n", last, m.start())
            last = m.start()
            end = self._text.find("\n", m.end())
            parsed = parse_key(self._text[m.end():end if end >= 0 else None], 0)
            if parsed is not None:
                headers.setdefault(parsed[0], number)
        return headers

    def _scan(self) -> None:
        table: tuple[str, ...] = ()
        in_multiline: str | None = None
        for number, raw in enumerate(self._text.splitlines(), start=1):
            if in_multiline is not None:
                if raw.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                header = parse_key(line, 2 if line.startswith("[[") else 1)
                if header is not None:
                    table = header[0]
                    self._record(table, number)
                continue
            parsed = parse_key(line, 0)
            if parsed is None or not line[parsed[1] :].startswith("="):
                continue
            self._record(table + parsed[0], number)
            value = line[parsed[1] + 1 :]
            starts = [(value.find(d), d) for d in ('"""', "'''") if d in value]
            if starts:
                index, delim = min(starts)
                if value[index:].count(delim) % 2 == 1:
                    in_multiline = delim

    def _record(self, path: tuple[str, ...], number: int) -> None:
        for n in range(1, len(path) + 1):
            self._lines.setdefault(path[:n], number)

    def line(self, *path: str) -> int | None:
        if not self._scanned:
            self._scanned = True
            self._scan()
        for n in range(len(path), 0, -1):
            found = self._lines.get(path[:n])
            if found is not None:
                return found
        return None


def parse_key(line: str, pos: int) -> tuple[tuple[str, ...], int] | None:
    """Parse a (dotted, maybe quoted) TOML key at `pos`: (parts, position after it and blanks)."""
    parts: list[str] = []
    n = len(line)
    while True:
        while pos < n and line[pos] in " \t":
            pos += 1
        if pos >= n:
            return None
        if line[pos] == '"':
            end, chars = pos + 1, []
            while end < n and line[end] != '"':
                if line[end] == "\\" and end + 1 < n:
                    end += 1
                chars.append(line[end])
                end += 1
            if end >= n:
                return None
            parts.append("".join(chars))
            pos = end + 1
        elif line[pos] == "'":
            end = line.find("'", pos + 1)
            if end < 0:
                return None
            parts.append(line[pos + 1 : end])
            pos = end + 1
        else:
            m = _BARE_KEY_RE.match(line, pos)
            if m is None:
                return None
            parts.append(m.group())
            pos = m.end()
        while pos < n and line[pos] in " \t":
            pos += 1
        if pos < n and line[pos] == ".":
            pos += 1
            continue
        return tuple(parts), pos

"""supervisord's ini syntax, as supervisord reads it (layer 1, pure; for `supervisord`).

configparser with `;` and `#` comments (inline ones after whitespace), `=` or `:`, no
interpolation (the `%(name)s` expansions are the importer's), plus what configparser does not
give: the line of every section header and option, the `environment` list and booleans.
"""

from __future__ import annotations

import configparser
import dataclasses
import re

from procsup.errors import ConfigError

__all__ = ["Section", "boolean", "parse", "parse_environment"]

_SECTION_RE = re.compile(r"^\[([^\]]+)\]")
_KEY_RE = re.compile(r"^([^\s=:;#\[][^=:]*?)\s*[=:]")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


@dataclasses.dataclass
class Section:
    """One [section] of a supervisord config: its options, and the line of its header and of
    each option."""

    file: str
    name: str
    line: int
    options: dict[str, str]
    lines: dict[str, int]


def parse(path: str, text: str) -> list[Section]:
    """The sections of supervisord config `text` (from `path`), read as supervisord reads it,
    with the line of each header and option. Raises ConfigError (file:line where known)."""
    parser = configparser.RawConfigParser(
        inline_comment_prefixes=(";", "#"), comment_prefixes=(";", "#"), strict=False,
        interpolation=None, delimiters=("=", ":"),
    )
    try:
        parser.read_string(text, source=path)
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError("expected a [section] header before the first option",
                          file=path, line=exc.lineno) from None
    except configparser.ParsingError as exc:
        line = exc.errors[0][0] if exc.errors else None
        raise ConfigError(f"cannot parse the line {exc.errors[0][1]!s}" if exc.errors
                          else str(exc), file=path, line=line) from None
    except configparser.Error as exc:
        raise ConfigError(f"syntax error: {exc.message}", file=path) from None
    lines = _scan(text)
    out = []
    for name in parser.sections():
        header_line, option_lines = lines.get(name, (None, {}))
        out.append(Section(path, name, header_line or 1, dict(parser.items(name)),
                           option_lines))
    return out


def parse_environment(text: str) -> dict[str, str]:
    """supervisord's `environment`: `KEY="value",KEY2=value2` -> dict. A value in '...' or
    "..." may hold commas; an unquoted value ends at the next comma; spaces around are
    stripped. Raises ValueError."""
    out: dict[str, str] = {}
    i = 0
    while True:
        while i < len(text) and (text[i].isspace() or text[i] == ","):
            i += 1
        if i >= len(text):
            return out
        m = re.compile(r"([^=,\s]+)\s*=\s*").match(text, i)
        if m is None:
            raise ValueError(f"expected KEY=VALUE at {text[i:]!r}")
        key, i = m.group(1), m.end()
        if i < len(text) and text[i] in "\"'":
            end = text.find(text[i], i + 1)
            if end == -1:
                raise ValueError(f"{key}: missing closing {text[i]}")
            value, i = text[i + 1 : end], end + 1
            while i < len(text) and text[i].isspace():
                i += 1
            if i < len(text) and text[i] != ",":
                raise ValueError(f"{key}: expected ',' after the closing quote, "
                                 f"found {text[i:]!r}")
        else:
            end = text.find(",", i)
            end = len(text) if end == -1 else end
            value, i = text[i:end].strip(), end
        out[key] = value


def boolean(value: str) -> bool:
    """supervisord's true/yes/on/1 or false/no/off/0, any case. Raises ValueError."""
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _scan(text: str) -> dict[str, tuple[int, dict[str, int]]]:
    """Line numbers: section name -> (line of its header, option -> line)."""
    found: dict[str, tuple[int, dict[str, int]]] = {}
    current: dict[str, int] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        m = _SECTION_RE.match(line)
        if m:
            current = found.setdefault(m.group(1).strip(), (number, {}))[1]
            continue
        m = _KEY_RE.match(line)
        if m and current is not None:
            current.setdefault(m.group(1).strip().lower(), number)
    return found

"""Shell syntax in a string `command` that no shell will read (layer 1: pure, no I/O).

Without `shell = true` a string command is split into words as a shell would split it (quotes
and backslashes, `shlex.split`), and nothing else a shell does happens: `cd /tmp && ls` runs the
program `cd` with `&&` as an argument. `find(command)` says what in `command` a shell would
have read as syntax; `warning(command)` turns that into the sentence `config` shows (located
there: file:line, app, key).

What counts, outside quotes (quoted text is what the user means literally, so
`python3 -c "print('a|b')"` finds nothing):
- operators: a run of `|`, `;`, `<`, `>`, `&` (`&&`, `||`, `2>&1`, `>>`, ...); a lone `&` in
  the middle of a word (`?a=1&b=2`, an unquoted URL) is left alone, `&` at a word's end or as
  a word of its own (run in the background) is not;
- the program word as a variable assignment (`FOO=bar python3 x.py`) or as a shell builtin or
  keyword (`cd`, `export`, `source`, `.`, `exec`, `if`, ...);
- expansions, outside quotes or inside double quotes: `$(...)`, backticks, `${...}`, `$NAME`;
- `~` at the start of a word.
Globs (`*`, `?`, `[`) are not: `--include=*.py` passed as is is usually what is meant, and a
shell would expand it only when it matched files.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass


class Kind(enum.Enum):
    OPERATOR = "operator"
    ASSIGNMENT = "assignment"
    BUILTIN = "builtin"
    EXPANSION = "expansion"
    TILDE = "tilde"


@dataclass(frozen=True)
class Finding:
    """One piece of shell syntax: as written (`'&&'`, `'2>&1'`, `'FOO=bar'`, `'$HOME'`; a
    substitution as `'$(...)'`, `'${...}'` or ``'`...`'``), what kind it is, and the index of
    the word (as the command is split) it is in."""

    text: str
    kind: Kind
    word: int


#: The program word that only a shell understands: builtins with no executable of their own,
#: and reserved words. (`echo`, `test`, `kill`, `printf`, `time` exist as programs too.)
BUILTINS = frozenset({
    ".", "source", "cd", "export", "exec", "eval", "set", "unset", "alias", "ulimit", "umask",
    "trap", "readonly", "shift", "local", "declare", "typeset", "pushd", "popd", "builtin",
    "if", "for", "while", "until", "case", "function", "select", "{", "!", "[[", "((",
})  # fmt: skip

_OPERATOR_CHARS = frozenset("|;<>&")
#: A command without any of these, whose first word is no builtin and holds no "=", has no
#: shell syntax: most commands, which `find` then answers without splitting them.
_MAYBE_RE = re.compile(r"[|;<>&$`~]")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WHITESPACE = frozenset(" \t\r\n")

# How each character of a word was written: outside quotes, in '...', in "...", or escaped.
_PLAIN, _SINGLE, _DOUBLE, _ESCAPED = "p", "s", "d", "e"


def words(command: str) -> list[tuple[str, str]]:
    """`command` split as `shlex.split` splits it, each word with how each of its characters
    was written (one of _PLAIN, _SINGLE, _DOUBLE, _ESCAPED per character). Unbalanced quotes
    end the last word (config refuses such a command before asking)."""
    out: list[tuple[str, str]] = []
    text: list[str] = []
    how: list[str] = []
    in_word = False
    quote: str | None = None
    i = 0
    while i < len(command):
        c = command[i]
        if quote == "'":
            if c == "'":
                quote = None
            else:
                text.append(c)
                how.append(_SINGLE)
        elif quote == '"':
            if c == '"':
                quote = None
            elif c == "\\" and i + 1 < len(command):
                nxt = command[i + 1]
                if nxt in '"\\':  # shlex: inside "...", a backslash escapes only " and \
                    text.append(nxt)
                    how.append(_ESCAPED)
                else:  # both kept; a shell would drop it before $ and `, unexpanded
                    text += [c, nxt]
                    how += [_DOUBLE, _ESCAPED if nxt in "$`" else _DOUBLE]
                i += 1
            else:
                text.append(c)
                how.append(_DOUBLE)
        elif c in _WHITESPACE:
            if in_word:
                out.append(("".join(text), "".join(how)))
                text, how, in_word = [], [], False
        else:
            in_word = True
            if c in "'\"":
                quote = c
            elif c == "\\" and i + 1 < len(command):
                i += 1
                text.append(command[i])
                how.append(_ESCAPED)
            else:
                text.append(c)
                how.append(_PLAIN)
        i += 1
    if in_word:
        out.append(("".join(text), "".join(how)))
    return out


def find(command: str) -> list[Finding]:
    """The shell syntax in `command`, in the order written (see the module docstring)."""
    head = command.split(None, 1)[0] if command and not command.isspace() else ""
    if "=" not in head and head not in BUILTINS and _MAYBE_RE.search(command) is None:
        return []  # (a quick answer: config asks for every app at every load)
    return find_all(command)


def find_all(command: str) -> list[Finding]:
    """`find` without its quick answer for the commands that cannot hold shell syntax."""
    found: list[Finding] = []
    for index, (text, how) in enumerate(words(command)):
        if index == 0:
            program = _program(text, how)
            if program is not None:
                found.append(program)
        found += _in_word(text, how, index)
    return found


def _program(text: str, how: str) -> Finding | None:
    m = _NAME_RE.match(text)
    if m is not None and text[m.end():m.end() + 1] == "=" and set(how[:m.end() + 1]) == {_PLAIN}:
        return Finding(text, Kind.ASSIGNMENT, 0)
    if text in BUILTINS and set(how) == {_PLAIN}:
        return Finding(text, Kind.BUILTIN, 0)
    return None


def _in_word(text: str, how: str, index: int) -> list[Finding]:
    found: list[Finding] = []
    in_backticks = False
    i = 0
    while i < len(text):
        c, h = text[i], how[i]
        if h == _PLAIN and c in _OPERATOR_CHARS:
            end = i
            while end < len(text) and how[end] == _PLAIN and text[end] in _OPERATOR_CHARS:
                end += 1
            run = text[i:end]
            if run != "&" or end == len(text) or i == 0:  # a&b (a URL's query) is meant as is
                found.append(Finding(_redirection(text, i, end), Kind.OPERATOR, index))
            i = end
            continue
        if h in (_PLAIN, _DOUBLE) and c == "`":
            if not in_backticks:  # the opening one
                found.append(Finding("`...`", Kind.EXPANSION, index))
            in_backticks = not in_backticks
        elif h in (_PLAIN, _DOUBLE) and c == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in "({":
                found.append(Finding("$(...)" if nxt == "(" else "${...}", Kind.EXPANSION, index))
            elif (m := _NAME_RE.match(text, i + 1)) is not None:
                found.append(Finding(text[i:m.end()], Kind.EXPANSION, index))
        elif h == _PLAIN and c == "~" and i == 0:
            found.append(Finding(text.split("/", 1)[0], Kind.TILDE, index))
        i += 1
    return found


def _redirection(text: str, start: int, end: int) -> str:
    """The operator run text[start:end] with the digits of a redirection around it, as the
    user knows it: `2>&1` rather than `>&`, `2>` rather than `>`."""
    run = text[start:end]
    if run[0] in "<>" and text[:start].isdigit():  # the fd number: "2" of 2>x
        run = text[:start] + run
    if run[-1] == "&" and run[0] in "<>0123456789":
        tail = text[end:]
        if tail == "-" or tail.isdigit():  # the target fd of a duplication: "1" of 2>&1
            run += tail
    return run


def warning(command: str) -> str | None:
    """What `config` says about a string `command` run without a shell, or None when it holds
    no shell syntax: what was found, what runs instead, and the fix."""
    found = find(command)
    if not found:
        return None
    names: list[str] = []
    for f in found:
        if f.text not in names:
            names.append(f.text)
    shown = ", ".join(repr(n) for n in names[:4]) + (", ..." if len(names) > 4 else "")
    argv = [text for text, _ in words(command)]
    program = found[0] if found[0].word == 0 and found[0].kind in (
        Kind.ASSIGNMENT, Kind.BUILTIN) else None
    head = f"{json.dumps(command)} contains shell syntax ({shown}): without shell = true"
    if program is not None and program.kind is Kind.ASSIGNMENT:
        name, value = program.text.split("=", 1)
        return (f"{head} it runs {json.dumps(program.text)} as the program; set "
                f"env = {{ {name} = {json.dumps(value)} }} instead, or shell = true")
    args: list[str] = []
    for f in found:
        if f.word > 0 and argv[f.word] not in args:
            args.append(argv[f.word])
    what = json.dumps(argv[0])
    if program is not None:
        what += " (a shell builtin, not a program)"
    if args:
        listed = [json.dumps(a) for a in args[:3]]
        more = len(args) - len(listed)
        if more:
            listed.append(f"{more} more")
        joined = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]
        what += f" with {joined} as {'an argument' if len(args) == 1 else 'arguments'}"
    elif program is None:  # the syntax is in the program word itself
        what += " as the program"
    return f"{head} it runs {what}; set shell = true"

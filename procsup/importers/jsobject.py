"""Read the plain data of a PM2 ecosystem file written in JavaScript, without running Node.

Accepted: `module.exports = VALUE` (optionally after `"use strict"`, optionally with `;`), or
a bare VALUE (PM2 evaluates `.json` ecosystems as JavaScript, so comments, trailing commas and
unquoted keys are common there too). VALUE is an object literal, an array literal, a string
('...', "..." or a template `...` without `${}`), a number (decimal, hex, octal, binary, with
a sign), `true`, `false`, `null`, `undefined`, `__dirname`, `__filename`, or several of those
joined with `+` (string concatenation or number addition, as JavaScript does it). Object keys
are identifiers, strings or numbers. Comments `//` and `/* */` are skipped.

Declarations before the export (`const`, `let`, `var NAME = ...;`) are read: a name bound to
such a value can be used in it (`const app = "api"`); any other (`const path =
require('path')`) is skipped, and only a use of that name is an error, so the usual first line
of an ecosystem file does not stop the import.

Anything else (a variable, a function call such as `require(...)` or `path.join(...)`,
`process.env.X`, a spread `...x`, a computed key, shorthand `{ name }`) is a ConfigError
naming file:line and what was found, because its value is only known to Node at run time.

Values come back as Python data: dict (insertion order), list, str, int, float, bool, None
(for `null`); a property whose value is `undefined` is left out, as `JSON.stringify` would.

Imports only layer 0.
"""

from __future__ import annotations

import dataclasses
import math
import re

from procsup.errors import ConfigError

_UNDEFINED = object()  # `undefined`: the property is absent

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r\n\f\v\u00a0\ufeff\u2028\u2029]+)
  | (?P<line_comment>//[^\n]*)
  | (?P<block_comment>/\*.*?\*/)
  | (?P<number>(?:0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+
        |(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)n?)
  | (?P<ident>[A-Za-z_$][A-Za-z0-9_$]*)
  | (?P<string>["'`])
  | (?P<punct>\.\.\.|=>|[{}\[\]:,;=+\-().?!*/%<>&|^~])
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}
_CONSTANTS: dict[str, object] = {"true": True, "false": False, "null": None,
                                 "undefined": _UNDEFINED}


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # "number", "ident", "string", "punct", "end"
    text: str  # the source text (for strings: the decoded value)
    line: int


class _Reader:
    def __init__(self, text: str, file: str, dirname: str) -> None:
        self.file = file
        self.names: dict[str, object] = {"__dirname": dirname, "__filename": file}
        self.tokens = self._tokenize(text)
        self.pos = 0

    # -- tokens ------------------------------------------------------------------------------

    def error(self, message: str, line: int) -> ConfigError:
        return ConfigError(message, file=self.file, line=line)

    def _tokenize(self, text: str) -> list[_Token]:
        tokens: list[_Token] = []
        pos, line = 0, 1
        while pos < len(text):
            m = _TOKEN_RE.match(text, pos)
            if m is None:
                raise self.error(f"unexpected character {text[pos]!r}", line)
            kind = m.lastgroup
            assert kind is not None
            if kind == "punct" and text.startswith("/*", pos):
                raise self.error("comment /* is not closed", line)
            if kind == "string":
                value, end, newlines = self._string(text, pos, line)
                tokens.append(_Token("string", value, line))
                pos, line = end, line + newlines
                continue
            if kind in ("block_comment", "ws"):
                pass
            elif kind != "line_comment":
                tokens.append(_Token(kind, m.group(), line))
            line += m.group().count("\n")
            pos = m.end()
        tokens.append(_Token("end", "", line))
        return tokens

    def _string(self, text: str, start: int, line: int) -> tuple[str, int, int]:
        """Decode the string literal at `start` -> (value, end position, newlines in it)."""
        quote = text[start]
        out: list[str] = []
        i, newlines = start + 1, 0
        while True:
            if i >= len(text):
                raise self.error(f"unterminated string (opened with {quote})", line)
            c = text[i]
            if c == quote:
                return "".join(out), i + 1, newlines
            if c == "\n":
                if quote != "`":
                    raise self.error("unterminated string (newline inside quotes)",
                                     line + newlines)
                newlines += 1
            if quote == "`" and text.startswith("${", i):
                raise self.error("template literal with ${...}: its value is only known when "
                                 "Node runs the file", line + newlines)
            if c == "\\":
                i += 1
                if i >= len(text):
                    continue
                e = text[i]
                if e == "\n":  # line continuation
                    newlines += 1
                elif e == "u":
                    m = re.compile(r"\{([0-9a-fA-F]{1,6})\}|([0-9a-fA-F]{4})").match(text, i + 1)
                    if m is None:
                        raise self.error("invalid \\u escape in a string", line + newlines)
                    out.append(chr(int(m.group(1) or m.group(2), 16)))
                    i = m.end() - 1
                elif e == "x":
                    hexdigits = text[i + 1 : i + 3]
                    if not re.fullmatch(r"[0-9a-fA-F]{2}", hexdigits):
                        raise self.error("invalid \\x escape in a string", line + newlines)
                    out.append(chr(int(hexdigits, 16)))
                    i += 2
                else:
                    out.append(_ESCAPES.get(e, e))
                i += 1
                continue
            out.append(c)
            i += 1

    @property
    def tok(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        tok = self.tokens[self.pos]
        if tok.kind != "end":
            self.pos += 1
        return tok

    def at(self, text: str) -> bool:
        return self.tok.kind == "punct" and self.tok.text == text

    def expect(self, text: str, what: str) -> None:
        if not self.at(text):
            raise self.error(f"expected {text!r} {what}, found {self.describe(self.tok)}",
                             self.tok.line)
        self.take()

    @staticmethod
    def describe(tok: _Token) -> str:
        if tok.kind == "end":
            return "the end of the file"
        if tok.kind == "string":
            return "a string"
        return repr(tok.text)

    # -- grammar -----------------------------------------------------------------------------

    def program(self) -> object:
        following = self.tokens[self.pos + 1] if self.tok.kind != "end" else self.tok
        if self.tok.kind == "string" and following.text in (";", "module", "const", "let",
                                                            "var"):
            self.take()  # a directive such as "use strict"
            if self.at(";"):
                self.take()
        while self.tok.kind == "ident" and self.tok.text in ("const", "let", "var"):
            self.declaration()
        if self.tok.kind == "ident" and self.tok.text == "module":
            self.take()
            self.expect(".", "after 'module'")
            if not (self.tok.kind == "ident" and self.tok.text == "exports"):
                raise self.error(f"expected 'exports' after 'module.', found "
                                 f"{self.describe(self.tok)}", self.tok.line)
            self.take()
            self.expect("=", "after 'module.exports'")
        elif self.tok.kind == "ident" and self.tok.text not in _CONSTANTS | self.names:
            raise self.error(
                f"found {self.tok.text!r}: only `module.exports = {{...}}` with a plain object "
                "literal can be read without running Node", self.tok.line)
        value = self.value()
        if value is _UNDEFINED:
            raise self.error("the file exports undefined", self.tok.line)
        while self.at(";"):
            self.take()
        if self.tok.kind != "end":
            raise self.error(
                f"unexpected {self.describe(self.tok)} after the exported value: only "
                "`module.exports = {...}` with a plain object literal can be read without "
                "running Node", self.tok.line)
        return value

    def declaration(self) -> None:
        """`const|let|var NAME = VALUE` up to `;` or the end of its line: NAME is bound when
        VALUE is plain data, otherwise the statement is skipped (NAME stays unknown)."""
        keyword = self.take()
        start = self.pos
        name = self.tok.text if self.tok.kind == "ident" else None
        try:
            if name is None:
                raise self.error("not a simple declaration", keyword.line)
            self.take()
            self.expect("=", f"after 'const {name}'")
            value = self.value()
            if not (self.at(";") or self.tok.kind == "end"
                    or self.tok.line > self.tokens[self.pos - 1].line):
                raise self.error("more than a value", self.tok.line)
            self.names[name] = value
        except ConfigError:
            self.pos = start
            self.names.pop(name or "", None)
            self._skip_statement()
        while self.at(";"):
            self.take()

    def _skip_statement(self) -> None:
        """Past the statement at `pos`: to a `;` or a line break outside brackets, where the
        next line starts another declaration or the export."""
        depth = 0
        while self.tok.kind != "end":
            tok = self.tok
            if depth == 0 and tok.kind == "punct" and tok.text == ";":
                return
            if depth == 0 and tok.kind == "ident" and tok.text in ("module", "const", "let",
                                                                    "var") \
                    and tok.line > self.tokens[self.pos - 1].line:
                return
            if tok.kind == "punct" and tok.text in "([{":
                depth += 1
            elif tok.kind == "punct" and tok.text in ")]}":
                depth = max(depth - 1, 0)
            self.take()

    def value(self) -> object:
        line = self.tok.line
        result = self.term()
        while self.at("+"):
            self.take()
            right = self.term()
            result = self.plus(result, right, line)
        return result

    def plus(self, left: object, right: object, line: int) -> object:
        if isinstance(left, str) or isinstance(right, str):
            return _js_string(left) + _js_string(right)
        if _is_number(left) and _is_number(right):
            assert isinstance(left, int | float) and isinstance(right, int | float)
            return left + right
        raise self.error("'+' of values other than strings and numbers is not supported", line)

    def term(self) -> object:
        tok = self.take()
        if tok.kind == "punct" and tok.text in ("-", "+"):
            operand = self.term()
            if not _is_number(operand):
                raise self.error(f"unary {tok.text!r} needs a number", tok.line)
            assert isinstance(operand, int | float)
            return -operand if tok.text == "-" else operand
        if tok.kind == "punct" and tok.text == "{":
            return self.mapping(tok.line)
        if tok.kind == "punct" and tok.text == "[":
            return self.array()
        if tok.kind == "punct" and tok.text == "(":
            inner = self.value()
            self.expect(")", "to close '('")
            return inner
        if tok.kind == "string":
            return tok.text
        if tok.kind == "number":
            return self.number(tok)
        if tok.kind == "ident":
            if tok.text in _CONSTANTS:
                return _CONSTANTS[tok.text]
            if tok.text in self.names and not self.at("(") and not self.at("."):
                return self.names[tok.text]
            if tok.text in ("NaN", "Infinity"):
                raise self.error(f"{tok.text} cannot be written in procsup's TOML", tok.line)
            what = self.unknown(tok)
            raise self.error(
                f"{what}: its value is only known when Node runs the file; "
                "write the value itself", tok.line)
        if tok.kind == "punct" and tok.text == "...":
            raise self.error("spread '...': its value is only known when Node runs the file",
                             tok.line)
        raise self.error(f"expected a value, found {self.describe(tok)}", tok.line)

    def unknown(self, tok: _Token) -> str:
        """Words for the expression starting at identifier `tok` (already taken)."""
        parts = [tok.text]
        while self.at(".") and self.tokens[self.pos + 1].kind == "ident":
            self.take()
            parts.append(self.take().text)
        name = ".".join(parts)
        if self.at("("):
            return f"function call {name}(...)"
        if tok.text == "function" or self.at("=>"):
            return f"function {name}"
        return f"variable {name!r}"

    def number(self, tok: _Token) -> object:
        text = tok.text.replace("_", "")
        if text.endswith("n"):
            text = text[:-1]
        try:
            if text[:2].lower() in ("0x", "0o", "0b"):
                return int(text, 0)
            if re.fullmatch(r"0\d+", text):  # legacy octal 0755 (what `umask: 0o022` meant)
                return int(text, 8)
            if re.fullmatch(r"\d+", text):
                return int(text)
            value = float(text)
        except ValueError:
            raise self.error(f"invalid number {tok.text!r}", tok.line) from None
        if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
            return int(value)
        return value

    def mapping(self, line: int) -> dict[str, object]:
        out: dict[str, object] = {}
        while not self.at("}"):
            tok = self.take()
            if tok.kind == "punct" and tok.text == "...":
                raise self.error("spread '...': its value is only known when Node runs the "
                                 "file", tok.line)
            if tok.kind == "punct" and tok.text == "[":
                raise self.error("computed key [...]: only plain keys can be read", tok.line)
            if tok.kind in ("string", "ident"):
                key = tok.text
            elif tok.kind == "number":
                key = _js_string(self.number(tok))
            elif tok.kind == "end":
                raise self.error(f"object opened on line {line} is not closed", tok.line)
            else:
                raise self.error(f"expected a key, found {self.describe(tok)}", tok.line)
            if self.at("(") or (tok.kind == "ident" and tok.text in ("get", "set", "async")
                                and self.tok.kind == "ident"):
                raise self.error(f"method {key!r}: functions cannot be read without running "
                                 "Node", tok.line)
            if not self.at(":"):
                if tok.kind == "ident" and (self.at(",") or self.at("}")):
                    raise self.error(f"shorthand property {key!r} refers to a variable; write "
                                     f"{key}: VALUE", tok.line)
                self.expect(":", f"after key {key!r}")
            self.take()
            value = self.value()
            if value is not _UNDEFINED:
                out[key] = value
            else:
                out.pop(key, None)
            if not self.at("}"):
                if self.tok.kind == "end":
                    raise self.error(f"object opened on line {line} is not closed",
                                     self.tok.line)
                self.expect(",", "between properties")
        self.take()
        return out

    def array(self) -> list[object]:
        out: list[object] = []
        while not self.at("]"):
            if self.at(","):
                raise self.error("holes in arrays ([a, , b]) are not supported", self.tok.line)
            if self.tok.kind == "end":
                raise self.error("array is not closed", self.tok.line)
            value = self.value()
            out.append(None if value is _UNDEFINED else value)
            if not self.at("]"):
                self.expect(",", "between array items")
        self.take()
        return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _js_string(value: object) -> str:
    """String(value) as JavaScript writes it, for the values `+` may meet."""
    if value is None:
        return "null"
    if value is _UNDEFINED:
        return "undefined"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list):
        return ",".join("" if v is None else _js_string(v) for v in value)
    return "[object Object]"


def parse(text: str, file: str, dirname: str) -> object:
    """The exported value of the JavaScript (or JSON) `text` read from `file`, whose directory
    `dirname` is the value of `__dirname`. Raises ConfigError with file:line."""
    return _Reader(text, file, dirname).program()

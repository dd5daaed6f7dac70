"""procsup.shellsyntax: what in a string command a shell would have read as syntax."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procsup import shellsyntax
from procsup.shellsyntax import Kind

# (command, what is found, as reported): an empty tuple means no warning.
CASES: list[tuple[str, tuple[str, ...]]] = [
    # operators
    ("cd /tmp && ls", ("cd", "&&")),
    ("python3 x.py || true", ("||",)),
    ("python3 x.py | tee out.log", ("|",)),
    ("python3 x.py; echo done", (";",)),
    ("python3 x.py > out.log", (">",)),
    ("python3 x.py >> out.log", (">>",)),
    ("python3 x.py < in.txt", ("<",)),
    ("python3 x.py >out.log 2>&1", (">", "2>&1")),
    ("python3 x.py 2>/dev/null", ("2>",)),
    ("python3 x.py &>all.log", ("&>",)),
    ("python3 x.py &", ("&",)),
    ("python3 x.py&", ("&",)),
    ("sleep 1 & sleep 2", ("&",)),
    ("python3 x.py|tee log", ("|",)),
    ("cd /tmp&&ls", ("cd", "&&")),
    # the program word
    ("FOO=bar python3 x.py", ("FOO=bar",)),
    ("_X1= python3 x.py", ("_X1=",)),
    ("export FOO=bar", ("export",)),
    ("source venv/bin/activate", ("source",)),
    (". venv/bin/activate", (".",)),
    ("exec python3 x.py", ("exec",)),
    ("if true", ("if",)),
    ("ulimit -n 4096", ("ulimit",)),
    # expansions and the tilde
    ('python3 x.py "$(date)"', ("$(...)",)),
    ("python3 x.py $(date)", ("$(...)",)),
    ("python3 x.py `date` `id`", ("`...`", "`...`")),
    ("python3 x.py --home $HOME", ("$HOME",)),
    ('python3 x.py --home "$HOME/x"', ("$HOME",)),
    ('python3 x.py "${HOME}"', ("${...}",)),
    ("python3 ~/app.py", ("~",)),
    ("python3 ~www/app.py", ("~www",)),
    # quoted or escaped: meant literally
    ("python3 -c \"print('a|b')\"", ()),
    ("python3 -c 'import os; print(1)'", ()),
    ('python3 -c "import os; print(os.getpid())"', ()),
    ("python3 x.py '$(date)' '$HOME' '`id`'", ()),
    ('python3 x.py "\\$HOME"', ()),
    ("python3 x.py \\| tee \\> x \\&\\&", ()),
    ("python3 x.py '&&' \"||\" ';'", ()),
    ("python3 x.py '~/app.py' a~b", ()),
    ("'FOO=bar' python3", ()),
    ("'cd' /tmp", ()),
    # plain commands and things left alone
    ("python3 -m http.server 8000", ()),
    ("gunicorn -w 4 -b 0.0.0.0:8000 app:app", ()),
    ("python3 x.py --include=*.py --only=?.txt [ab]", ()),  # globs: not warned about
    ("curl http://example.com/?a=1&b=2", ()),  # a lone & inside a word: a URL's query
    ("python3 -c print(1)", ()),  # parentheses pass as is
    ("python3 x.py --price $5 $ a$", ()),  # $ not followed by a name
    ("FOO", ()),
    ("python3 x.py FOO=bar", ()),  # an assignment only counts as the program word
    ("cdx /tmp", ()),
    ("env FOO=bar python3 x.py", ()),
    ("python3 x.py --cd", ()),
]


@pytest.mark.parametrize(("command", "expected"), CASES, ids=[c for c, _ in CASES])
def test_find(command: str, expected: tuple[str, ...]) -> None:
    assert tuple(f.text for f in shellsyntax.find(command)) == expected
    assert (shellsyntax.warning(command) is None) == (not expected)


@pytest.mark.parametrize("command", [c for c, _ in CASES] + [
    "a''b", "''", "a \"\" b", "x\\ y", 'a"b c"d', "'a b'\\ c", '"a\\"b"', '"a\\\\b"', '"a\\nb"',
    "  lead  trail  ", "tab\tsep\nnewline",
])
def test_words_split_as_shlex_does(command: str) -> None:
    """The words found are the words that run: what config's shlex.split makes of it."""
    assert [text for text, _ in shellsyntax.words(command)] == shlex.split(command)


def test_kinds_and_words() -> None:
    found = shellsyntax.find("FOO=1 python3 x.py $HOME 2>&1 ~/y")
    assert [(f.text, f.kind, f.word) for f in found] == [
        ("FOO=1", Kind.ASSIGNMENT, 0), ("$HOME", Kind.EXPANSION, 3),
        ("2>&1", Kind.OPERATOR, 4), ("~", Kind.TILDE, 5),
    ]


WARNINGS = [
    ("cd /tmp && ls",
     '"cd /tmp && ls" contains shell syntax (\'cd\', \'&&\'): without shell = true it runs "cd" '
     '(a shell builtin, not a program) with "&&" as an argument; set shell = true'),
    ("FOO=bar python3 x.py",
     '"FOO=bar python3 x.py" contains shell syntax (\'FOO=bar\'): without shell = true it runs '
     '"FOO=bar" as the program; set env = { FOO = "bar" } instead, or shell = true'),
    ("python3 x.py > out.log 2>&1",
     '"python3 x.py > out.log 2>&1" contains shell syntax (\'>\', \'2>&1\'): without shell = '
     'true it runs "python3" with ">" and "2>&1" as arguments; set shell = true'),
    ("exec python3 x.py",
     '"exec python3 x.py" contains shell syntax (\'exec\'): without shell = true it runs "exec" '
     "(a shell builtin, not a program); set shell = true"),
    ("a | b | c ; d && e x>y",
     '"a | b | c ; d && e x>y" contains shell syntax (\'|\', \';\', \'&&\', \'>\'): without '
     'shell = true it runs "a" with "|", ";", "&&" and 1 more as arguments; set shell = true'),
    ("a>b",
     '"a>b" contains shell syntax (\'>\'): without shell = true it runs "a>b" as the program; '
     "set shell = true"),
    ('python3 -c "print(\\"$HOME\\")"',
     '"python3 -c \\"print(\\\\\\"$HOME\\\\\\")\\"" contains shell syntax (\'$HOME\'): without '
     'shell = true it runs "python3" with "print(\\"$HOME\\")" as an argument; '
     "set shell = true"),
]


@pytest.mark.parametrize(("command", "expected"), WARNINGS, ids=[c for c, _ in WARNINGS])
def test_warning_says_what_runs_and_the_fix(command: str, expected: str) -> None:
    assert shellsyntax.warning(command) == expected


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=" \t'\"\\|&;<>$`~=({}ab1.-/*#cdexportFO", max_size=24))
def test_any_command_splits_as_shlex_and_the_quick_answer_is_right(command: str) -> None:
    try:
        expected = shlex.split(command)
    except ValueError:  # unbalanced quotes: config refuses the command before asking
        return
    assert [text for text, _ in shellsyntax.words(command)] == expected
    assert shellsyntax.find(command) == shellsyntax.find_all(command)

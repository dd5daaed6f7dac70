"""procsup.globs: the include globs, as glob.glob reads them, bounded and loop-free (real files)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from procsup import globs
from procsup.globs import Expander, LimitExceeded, Limits, Loop

#: Each case of a loop must end at once; before the bounded walk these ran for ever.
pytestmark = pytest.mark.timeout(20)

TREE = [
    "a.toml", "b.toml", ".hidden.toml", "notes.txt", "[x].toml",
    "d/c.toml", "d/e/f.toml", "d/e/g/h.toml", "d/.git/i.toml", ".dot/j.toml", "k/l.toml",
]  # fmt: skip


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in TREE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    return tmp_path


@pytest.mark.parametrize(
    "pattern",
    [
        "*.toml", "?.toml", "[ab].toml", "[[]x].toml", ".*.toml", "*", "**", "**/*.toml",
        "d/**/*.toml", "d/**", "*/*.toml", "*/**/*.toml", "**/e/*.toml", "**/**/*.toml",
        ".dot/*.toml", "d/e", "d/e/g/h.toml", "nothing/*.toml", "a.toml/*", "d/*/g/*",
        "**/.git/*.toml",
    ],
)  # fmt: skip
def test_same_matches_as_glob_without_links(tree: Path, pattern: str) -> None:
    """The pattern language users know: glob.glob(recursive=True) is the oracle."""
    full = str(tree / pattern)
    want = sorted({os.path.normpath(p) for p in glob.glob(full, recursive=True)})
    assert Expander().expand(full) == want


def self_links(tmp_path: Path) -> Path:
    """loop.d/a.toml with loop.d/self1 -> . and loop.d/self2 -> . (the fault run's tree)."""
    d = tmp_path / "loop.d"
    d.mkdir()
    (d / "a.toml").write_text("")
    (d / "self1").symlink_to(".")
    (d / "self2").symlink_to(".")
    return d


def test_two_links_to_the_directory_itself_are_not_followed(tmp_path: Path) -> None:
    d = self_links(tmp_path)
    expander = Expander()
    assert expander.expand(str(d / "**/*.toml")) == [str(d / "a.toml")]
    assert expander.loops == [Loop(str(d / "self1"), str(d)), Loop(str(d / "self2"), str(d))]
    # Every kind of name stops at a loop; each link is recorded once per Expander.
    assert expander.expand(str(d / "*/*/*.toml")) == []
    assert expander.expand(str(d / "**")) == [str(d), str(d / "a.toml")]
    assert len(expander.loops) == 2


def test_a_link_to_an_ancestor_is_a_loop(tmp_path: Path) -> None:
    (tmp_path / "top" / "sub").mkdir(parents=True)
    (tmp_path / "top" / "sub" / "x.toml").write_text("")
    (tmp_path / "top" / "sub" / "up").symlink_to("../..")
    expander = Expander()
    found = expander.expand(str(tmp_path / "top/**/*.toml"))
    assert found == [str(tmp_path / "top/sub/x.toml")]
    assert expander.loops == [Loop(str(tmp_path / "top/sub/up"), str(tmp_path))]


def test_a_directory_reached_through_two_links_is_searched_once(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "s.toml").write_text("")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").symlink_to(shared)
    (tmp_path / "d" / "y").symlink_to(shared)
    expander = Expander()
    assert expander.expand(str(tmp_path / "d/**/*.toml")) == [str(tmp_path / "d/x/s.toml")]
    assert expander.loops == []  # not a loop: two ways to one place
    # Without `**` the names are the pattern's: both paths (config.py includes the file once).
    assert expander.expand(str(tmp_path / "d/*/s.toml")) == [
        str(tmp_path / "d/x/s.toml"), str(tmp_path / "d/y/s.toml")]


def nest(top: Path, depth: int) -> Path:
    deep = top.joinpath(*(f"n{i}" for i in range(depth)))
    deep.mkdir(parents=True)
    (deep / "deep.toml").write_text("")
    return deep


def test_depth_bound_below_a_double_star(tmp_path: Path) -> None:
    nest(tmp_path / "ok", 16)
    assert len(Expander().expand(str(tmp_path / "ok/**/*.toml"))) == 1
    deep = nest(tmp_path / "deep", 17)
    with pytest.raises(LimitExceeded) as info:
        Expander().expand(str(tmp_path / "deep/**/*.toml"))
    assert info.value.message == (
        f"goes more than 16 directories deep below {tmp_path / 'deep'} (at {deep})")


def test_file_bound_counts_every_pattern_of_one_expander(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"{i}.toml").write_text("")
    expander = Expander(Limits(files=6))
    assert len(expander.expand(str(tmp_path / "*.toml"))) == 4
    with pytest.raises(LimitExceeded) as info:
        expander.expand(str(tmp_path / "*.toml") + "*")  # 4 more: 8 > 6
    assert info.value.message == "matches more than 6 files"
    assert len(info.value.partial) == 2


def test_directory_bound_is_the_cost_of_the_walk(tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / f"d{i}").mkdir()
    with pytest.raises(LimitExceeded) as info:
        Expander(Limits(directories=5)).expand(str(tmp_path / "**/*.toml"))
    assert info.value.message == "searches more than 5 directories"


def test_the_default_bounds() -> None:
    assert Limits(depth=16, files=1000, directories=10_000) == globs.LIMITS


def test_directories_for_the_watch(tmp_path: Path) -> None:
    d = self_links(tmp_path)
    (d / "sub" / ".hidden").mkdir(parents=True)
    (d / "sub" / "back").symlink_to("..")
    expander = Expander()
    assert expander.directories(str(d)) == [str(d), str(d / "sub")]
    assert {lp.link for lp in expander.loops} == {
        str(d / "self1"), str(d / "self2"), str(d / "sub" / "back")}
    assert Expander().directories(str(tmp_path / "missing")) == []
    deep = nest(tmp_path / "deep", 20)
    with pytest.raises(LimitExceeded) as info:
        Expander().directories(str(tmp_path / "deep"))
    assert len(info.value.partial) == 17  # deep itself and 16 levels: what the watch keeps
    assert str(deep) not in info.value.partial

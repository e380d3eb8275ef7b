"""common.sorting: an external merge sort in bounded memory, and key-sorted streams side by side."""

from __future__ import annotations

import os
import random
import re

import pytest

import common.sorting as sorting
from common.sorting import align, keyed, sorted_file, sorted_lines


def lines(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.randrange(50):03d} {i}\n" for i in range(count)]  # keys repeat: the order of equals shows


def first_field(line: str) -> str:
    return line.split(" ", 1)[0]


@pytest.fixture
def spills(monkeypatch):
    """The number of lines of each run spilled to disk."""
    runs, original = [], sorting._spill
    monkeypatch.setattr(sorting, "_spill", lambda chunk, scratch: runs.append(len(chunk)) or original(chunk, scratch))
    return runs


def test_beyond_its_budget_the_sort_spills_runs_and_merges_them_stably(tmp_path, spills, monkeypatch):
    monkeypatch.setattr(sorting, "FAN_IN", 3)  # 40 runs: merged in passes of 3, as a million lines would be
    reading, most, where, original = [0], [0], set(), sorting._read_run

    def read_run(path):  # how many runs are open at once, and where they are
        reading[0] += 1
        most[0] = max(most[0], reading[0])
        where.add((os.path.dirname(path), bool(re.fullmatch(r"run-.+\.txt", os.path.basename(path)))))
        yield from original(path)
        reading[0] -= 1

    monkeypatch.setattr(sorting, "_read_run", read_run)
    given = lines(405)  # 40 runs of 10 lines, and 5 left over at the end: a last, shorter run
    result = list(sorted_lines(iter(given), first_field, str(tmp_path), budget_bytes=1000))
    assert most[0] <= 3
    assert where == {(str(tmp_path), True)}  # every run, first or merged, is a run-*.txt in the scratch folder
    assert result == sorted(given, key=first_field)  # Python's sort is stable: equal keys keep their order
    assert len(spills) >= 40 and max(spills) * (len(given[0]) + sorting._LINE_OVERHEAD) <= 1000 + 200
    assert list(tmp_path.iterdir()) == []  # every run removed once read


@pytest.mark.parametrize("budget, runs", [(3 * 104, [3, 3, 3, 1]), (3 * 104 + 1, [4, 4, 2])])
def test_a_run_is_spilled_when_its_lines_reach_the_budget(tmp_path, spills, monkeypatch, budget, runs):
    """Each 4-character line costs 104 bytes (_LINE_OVERHEAD 100): three reach 312 bytes, a budget of 313 holds
    four. With FAN_IN 3, three runs are merged at once, four in two passes."""
    monkeypatch.setattr(sorting, "FAN_IN", 3)
    read, original = [], sorting._read_run
    monkeypatch.setattr(sorting, "_read_run", lambda path: read.append(path) or original(path))
    given = [f"{k}{n}x\n" for n, k in enumerate("jihgfedcba")]
    assert list(sorted_lines(iter(given), lambda line: line, str(tmp_path), budget)) == sorted(given)
    assert spills == runs
    assert len(read) == len(runs) + (2 if len(runs) > 3 else 0)  # merged directly, or after one pass


def test_a_file_may_be_read_by_an_opener_given_its_path(tmp_path):
    opened = []
    opener = lambda path: opened.append(path) or iter(["b\n", "a\n"])  # noqa: E731
    assert list(sorted_file("some/where", lambda line: line, str(tmp_path), opener=opener)) == ["a\n", "b\n"]
    assert opened == ["some/where", "some/where"]  # read once to check the order, once to sort


def test_within_its_budget_nothing_is_spilled(tmp_path, spills):
    given = lines(100)
    assert list(sorted_lines(iter(given), first_field, str(tmp_path))) == sorted(given, key=first_field)
    assert spills == []


def test_a_file_in_order_is_read_as_it_is_and_one_out_of_order_is_sorted(tmp_path, spills, monkeypatch):
    path = tmp_path / "in.txt"
    given = sorted(lines(300), key=first_field)
    path.write_text("".join(given))
    assert list(sorted_file(str(path), first_field, str(tmp_path), budget_bytes=500)) == given
    assert spills == []
    path.write_text("".join(reversed(given)))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    where, read_run = set(), sorting._read_run
    monkeypatch.setattr(sorting, "_read_run", lambda run: where.add(os.path.dirname(run)) or read_run(run))
    assert list(sorted_file(str(path), first_field, str(scratch), budget_bytes=500)) == sorted(
        reversed(given), key=first_field)
    assert spills and where == {str(scratch)}  # its runs in the scratch folder


def test_streams_side_by_side():
    a = keyed(["a1", "c1", "d1"], lambda s: s[0])
    b = keyed(["b2", "c2", "c2bis", "e2"], lambda s: s[0])  # two under c: the first counts
    assert list(align([a, b])) == [("a", ["a1", None]), ("b", [None, "b2"]), ("c", ["c1", "c2"]), ("d", ["d1", None]),
                                   ("e", [None, "e2"])]
    # streams of different kinds of items (a listing's refs, index entries, CSV records): never compared
    mixed = list(align([keyed([{"id": "a"}, {"id": "b"}], lambda d: d["id"]), keyed(["a,1", "c,1"], lambda s: s[0])]))
    assert mixed == [("a", [{"id": "a"}, "a,1"]), ("b", [{"id": "b"}, None]), ("c", [None, "c,1"])]


def test_a_stream_out_of_order_is_an_error_not_a_wrong_answer():
    with pytest.raises(RuntimeError, match="not: 'a' after 'b'"):
        list(keyed(["b", "a"], lambda s: s))

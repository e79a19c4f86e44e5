"""Nested class-balanced subsets: nesting, balance (±1), shortfall filling, determinism, errors."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from dalivssl.data.manifest import Manifest, VideoRecord, load_manifest, save_manifest
from dalivssl.data.subsets import nested_subsets
from dalivssl.errors import DalivsslError


def make_manifest(per_class: dict[int, int], root="/data") -> Manifest:
    recs = [VideoRecord(f"c{c}/v{i}.webm", 50, c, f"c{c}")
            for c, n in per_class.items() for i in range(n)]
    return Manifest(Path(root), recs, [f"c{c}" for c in range(max(per_class) + 1)])


def counts(m):
    return Counter(r.label for r in m)


def test_nested_and_balanced():
    m = make_manifest({c: 30 for c in range(7)})
    subs = nested_subsets(m, [10, 50, 100, 210], seed=3)
    assert list(subs) == [10, 50, 100, 210]
    prev = set()
    for n, s in subs.items():
        paths = {r.path for r in s}
        assert len(paths) == len(s) == n
        assert prev < paths  # strict subset of the next larger one
        prev = paths
        c = counts(s)
        assert max(c.values()) - min(c.values()) <= 1
        assert len(c) == min(7, n)
    assert len({r.path for r in subs[210]}) == 210  # the whole manifest


def test_small_classes_give_all_and_others_fill():
    m = make_manifest({0: 2, 1: 20, 2: 20, 3: 5})
    subs = nested_subsets(m, [20, 40], seed=0)
    c20 = counts(subs[20])
    assert c20[0] == 2 and c20[3] == 5  # everything they have
    assert sorted([c20[1], c20[2]]) == [6, 7]  # the other 13, split as evenly as possible
    c40 = counts(subs[40])
    assert (c40[0], c40[3]) == (2, 5) and c40[1] + c40[2] == 33 and abs(c40[1] - c40[2]) <= 1


def test_deterministic_for_a_seed_and_different_across_seeds():
    m = make_manifest({c: 10 for c in range(4)})
    a = nested_subsets(m, [8], seed=1)[8]
    b = nested_subsets(m, [8], seed=1)[8]
    others = [{r.path for r in nested_subsets(m, [8], seed=s)[8]} for s in range(2, 6)]
    assert [r.path for r in a] == [r.path for r in b]
    assert any(o != {r.path for r in a} for o in others)
    # records keep manifest order
    order = {r.path: i for i, r in enumerate(m)}
    assert [order[r.path] for r in a] == sorted(order[r.path] for r in a)


def test_too_large_and_bad_sizes():
    m = make_manifest({0: 3, 1: 3})
    with pytest.raises(DalivsslError, match=r"subset size 7 is larger than the manifest \(6 "):
        nested_subsets(m, [2, 7])
    with pytest.raises(DalivsslError, match="positive"):
        nested_subsets(m, [0, 2])
    with pytest.raises(DalivsslError, match="integers"):
        nested_subsets(m, "2,x")


def test_size_below_class_count_refused(tmp_path):
    """Review t3 #45: --sizes 3 on 4 classes silently gave a 3-class subset."""
    from dalivssl.cli import cli

    m = make_manifest({c: 2 for c in range(4)})
    with pytest.raises(DalivsslError, match=r"^subset size 3 is smaller than the manifest's 4 "
                                            r"classes: a class-balanced subset needs every class"):
        nested_subsets(m, [3, 8])
    assert set(counts(nested_subsets(m, [4])[4]).values()) == {1}
    (tmp_path / "d").mkdir()
    src = save_manifest(make_manifest({c: 2 for c in range(4)}, tmp_path / "d"),
                        tmp_path / "m.jsonl")
    res = CliRunner().invoke(cli, ["data", "subset", str(src), "--sizes", "3,8", "-o",
                                   str(tmp_path / "subs")])
    assert isinstance(res.exception, DalivsslError) and "subset size 3 is smaller than the " \
        "manifest's 4 classes" in str(res.exception)
    assert not (tmp_path / "subs").exists()


def test_cli_subset(tmp_path):
    from dalivssl.cli import cli

    (tmp_path / "d").mkdir()
    src = save_manifest(make_manifest({c: 5 for c in range(3)}, tmp_path / "d"),
                        tmp_path / "m.jsonl")
    res = CliRunner().invoke(cli, ["data", "subset", str(src), "--sizes", "6,3", "--seed", "2",
                                   "-o", str(tmp_path / "subs")])
    assert res.exit_code == 0, res.output
    s3, s6 = (load_manifest(tmp_path / "subs" / f"subset_{n}.jsonl") for n in (3, 6))
    assert set(counts(s3).values()) == {1} and set(counts(s6).values()) == {2}
    assert {r.path for r in s3} < {r.path for r in s6}
    res = CliRunner().invoke(cli, ["data", "subset", str(src), "--sizes", "99", "-o",
                                   str(tmp_path / "x")])
    assert isinstance(res.exception, DalivsslError) and "larger than the manifest" in str(
        res.exception)
    res = CliRunner().invoke(cli, ["data", "subset", str(src), "--sizes", "3", "--split", "nosuch",
                                   "-o", str(tmp_path / "y")])  # review t3 #45: was "(0 videos)"
    assert isinstance(res.exception, DalivsslError) and str(res.exception) == (
        f"{src}: no video in split 'nosuch'; its splits: train")
    assert not (tmp_path / "y").exists()

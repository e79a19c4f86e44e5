"""Top-k retrieval on hand-made features, the feature cache, and the `retrieve` command."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from tests.analysis.test_features import TinyBackbone

# gallery: g0 and g1 identical (a tie), g2 orthogonal, g3 opposite
GALLERY = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
GALLERY_LABELS = np.array([0, 1, 1, 2])
QUERIES = np.array([[1.0, 0.0], [0.0, 3.0], [1.0, 0.1]])
QUERY_LABELS = np.array([1, 2, 0])


def test_topk_exact_values_ties_and_cap():
    from dalivssl.engine.retrieval import topk_retrieval

    r = topk_retrieval(QUERIES, QUERY_LABELS, GALLERY, GALLERY_LABELS, ks=(1, 2, 5))
    # q0 ties g0/g1 (cosine 1): the lower gallery index ranks first -> [0, 1, 2, 3]; label 1
    # first appears at rank 1. q1: g2 (1.0), then g0, g1, g3 all at 0 in gallery order; label 2
    # at rank 3. q2: nearest g0 (label 0) -> hit at rank 0.
    assert r.ranking.tolist() == [[0, 1, 2, 3], [2, 0, 1, 3], [0, 1, 2, 3]]
    assert r.topk == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 5: 1.0}
    assert r.effective == {1: 1, 2: 2, 5: 4} and r.capped == [5]
    assert r.hits.tolist() == [[False, True, True], [False, False, True], [True, True, True]]


def test_topk_tie_break_is_by_gallery_position():
    from dalivssl.engine.retrieval import topk_retrieval

    # swapping the labels of the two tied gallery items flips q0's top-1 from miss to hit
    r = topk_retrieval(QUERIES[:1], QUERY_LABELS[:1], GALLERY, np.array([1, 0, 1, 2]), ks=(1,))
    assert r.topk[1] == 1.0
    # permuting queries permutes nothing else: accuracy is a mean over queries
    a = topk_retrieval(QUERIES, QUERY_LABELS, GALLERY, GALLERY_LABELS, ks=(1, 2))
    b = topk_retrieval(QUERIES[::-1], QUERY_LABELS[::-1], GALLERY, GALLERY_LABELS, ks=(1, 2))
    assert a.topk == b.topk


def test_topk_bad_input():
    from dalivssl.engine.retrieval import topk_retrieval
    from dalivssl.errors import DalivsslError

    with pytest.raises(DalivsslError, match=">= 1"):
        topk_retrieval(QUERIES, QUERY_LABELS, GALLERY, GALLERY_LABELS, ks=(0,))
    with pytest.raises(DalivsslError, match="differ in length"):
        topk_retrieval(QUERIES, QUERY_LABELS[:2], GALLERY, GALLERY_LABELS)


def _manifests(tmp_path):
    from dalivssl.data.manifest import Manifest, VideoRecord, save_manifest

    classes = ["a", "b"]
    tr = Manifest(tmp_path, [VideoRecord(f"tr{i}.webm", 40, label=i % 2, class_name=classes[i % 2])
                             for i in range(4)], classes)
    te = Manifest(tmp_path, [VideoRecord(f"te{i}.webm", 40, label=i % 2, class_name=classes[i % 2])
                             for i in range(2)], classes)
    return save_manifest(tr, tmp_path / "train.jsonl"), save_manifest(te, tmp_path / "test.jsonl")


def test_feature_cache_is_reused(tmp_path, monkeypatch):
    import dalivssl.engine.retrieval as retrieval
    from dalivssl.engine.features import VideoOutputs

    train, test = _manifests(tmp_path)
    calls = []

    def fake(backbone, manifest, settings, device="cpu", batch_size=4, on_batch=None, where=""):
        calls.append(where)
        n = len(manifest)
        labels = np.array([r.label for r in manifest.records])
        video = np.stack([np.eye(2)[lab] + 0.01 * i for i, lab in enumerate(labels)])
        return VideoOutputs(video.astype(np.float32), None, labels, np.arange(n))

    monkeypatch.setattr(retrieval, "compute_features", fake)
    settings = {"num_clips": 2, "clip_len": 4, "size": 8, "normalize": "unit"}
    cache = tmp_path / "cache"

    def run_retrieval(*args):  # the engine computes, the run spec writes the run dir
        from dalivssl.runs.retrieve import write_retrieval

        res = retrieval.run_retrieval(*args, ks=(1, 5), cache_dir=cache)
        write_retrieval(tmp_path / "out", res["result"], res["features"], "tiny", None, train,
                        test, args[-1])
        return res

    first = run_retrieval(TinyBackbone(), "tiny", None, train, test, settings)
    assert calls == [str(train), str(test)] and first["cached"] == {"train": False, "test": False}
    assert first["result"].topk == {1: 1.0, 5: 1.0} and first["result"].effective[5] == 4
    assert len(list(cache.glob("*.h5"))) == 2

    def boom(*a, **k):
        raise AssertionError("feature extractor called despite the cache")

    monkeypatch.setattr(retrieval, "compute_features", boom)
    second = run_retrieval(TinyBackbone(), "tiny", None, train, test, settings)
    assert second["cached"] == {"train": True, "test": True}
    assert second["result"].topk == first["result"].topk

    # other clip settings -> another key -> extractor runs again
    monkeypatch.setattr(retrieval, "compute_features", fake)
    run_retrieval(TinyBackbone(), "tiny", None, train, test, {**settings, "num_clips": 3})
    assert len(calls) == 4 and len(list(cache.glob("*.h5"))) == 4

    rows = list(csv.DictReader(open(tmp_path / "out" / "retrieval.csv")))
    assert [(r["k"], r["effective_k"]) for r in rows] == [("1", "1"), ("5", "4")]
    from dalivssl.results import ResultsFile

    with ResultsFile(tmp_path / "out" / "retrieval.h5", "r") as rf:
        assert rf.read("retrieval", "k").tolist() == [1, 5]
        assert rf.read("retrieval", "topk").tolist() == [1.0, 1.0]
        assert rf.read("retrieval", "ranking").shape == (2, 4)


def test_cache_key_depends_on_checkpoint_bytes_and_manifest(tmp_path):
    from dalivssl.engine.retrieval import cache_key

    train, test = _manifests(tmp_path)
    s = {"num_clips": 2, "clip_len": 4, "size": 8, "normalize": "unit"}
    ck = tmp_path / "a.pt"
    ck.write_bytes(b"one")
    k1 = cache_key(str(ck), "tiny", train, s)
    assert k1 == cache_key(str(ck), "tiny", train, dict(reversed(list(s.items()))))
    assert k1 != cache_key(str(ck), "tiny", test, s)
    ck.write_bytes(b"two")  # retrained weights at the same path
    assert k1 != cache_key(str(ck), "tiny", train, s)
    ck.write_bytes(b"one")
    assert cache_key(str(ck), "tiny", train, s) == k1
    (tmp_path / "tr1.webm").write_bytes(b"other video")  # replaced in place, same records
    assert cache_key(str(ck), "tiny", train, s) != k1


# ---------------------------------------------------------------------------------------- CLI
def test_cli_retrieve_missing_manifest(tmp_path, capsys):
    from dalivssl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["retrieve", "--random-init", "--arch", "shufflenet", "--train",
              str(tmp_path / "nope.jsonl"), "--test", str(tmp_path / "nope.jsonl")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "nope.jsonl" in err


def test_cli_retrieve_arch_mismatch(tmp_path, capsys):
    from dalivssl.cli import main

    train, test = _manifests(tmp_path)
    ck = tmp_path / "pre.pt"
    torch.save({"kind": "pretrain", "arch": "shufflenet", "backbone": {}, "head": {},
                "config": {}, "versions": {}, "step": 0, "epoch": 0}, ck)
    with pytest.raises(SystemExit) as exc:
        main(["retrieve", "--checkpoint", str(ck), "--arch", "r3d", "--train", str(train),
              "--test", str(test)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1
    assert "'shufflenet'" in err and "'r3d'" in err


@pytest.mark.slow
def test_cli_retrieve_end_to_end_then_cached(tmp_path, tiny_synth, monkeypatch):
    pytest.importorskip("pipelines.loader")
    pytest.importorskip("models")
    from click.testing import CliRunner

    import dalivssl.engine.retrieval as retrieval
    from dalivssl.cli import cli
    from dalivssl.data.manifest import load_manifest

    args = ["retrieve", "--random-init", "--arch", "r3d", "--train", str(tiny_synth["train"]),
            "--test", str(tiny_synth["test"]), "--clips", "2", "--clip-len", "8", "--size",
            "32", "--topk", "1,5,100", "--out", str(tmp_path / "out"), "--cache-dir",
            str(tmp_path / "cache")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    n_train = len(load_manifest(tiny_synth["train"]))
    rows = list(csv.DictReader(open(tmp_path / "out" / "retrieval.csv")))
    assert [int(r["effective_k"]) for r in rows] == [1, 5, n_train]
    accs = [float(r["accuracy"]) for r in rows]
    assert all(0 <= a <= 1 for a in accs) and accs == sorted(accs) and accs[-1] == 1.0

    monkeypatch.setattr(retrieval, "compute_features",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    res2 = CliRunner().invoke(cli, args)  # the same --out again: refused, nothing replaced
    assert res2.exit_code == 1 and "already holds retrieval.h5" in str(res2.exception)
    res2 = CliRunner().invoke(cli, args + ["--overwrite"])  # features come from the cache
    assert res2.exit_code == 0, res2.output + repr(res2.exception)
    assert (tmp_path / "out" / "retrieval.png").stat().st_size > 5000
    assert [float(r["accuracy"]) for r in
            csv.DictReader(open(tmp_path / "out" / "retrieval.csv"))] == accs

"""``benchmarks/text_generation.py``: the corpus split, and the whole pipeline in ``--quick``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import run_benchmark

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_corpus_split_keeps_fortunes_whole_and_maps_unseen_characters(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import text_generation as tg

    fortunes = [f"fortune number {i}" for i in range(19)] + ["ζ only here"]
    (tmp_path / "misc").write_text("\n%\n".join(fortunes) + "\n")
    (tmp_path / "misc.dat").write_bytes(b"\x00\x01")  # strfile's index: not text
    corpus = tg.load_corpus(seed=0, held_out_fraction=0.25, root=tmp_path)
    assert corpus.files == ["misc"] and corpus.fortunes == (15, 5)
    decode = "".join
    train = decode(corpus.vocab[i] for i in corpus.train)
    held = decode(corpus.vocab[i] for i in corpus.held_out)
    pieces = [*train.split("\n\n"), *held.split("\n\n")]
    known = {f.replace("ζ", tg.UNKNOWN) for f in fortunes} | set(fortunes)
    assert len(pieces) == 20 and set(pieces) <= known
    windows = tg.windows(corpus.train, 8)
    assert windows.shape == (len(corpus.train) // 8, 8) and windows.dtype == np.int64


def test_missing_corpus_says_which_package(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import text_generation as tg

    with pytest.raises(tg.CorpusUnavailable, match="apt-get install fortunes"):
        tg.load_corpus(seed=0, held_out_fraction=0.1, root=tmp_path)


@pytest.mark.slow
def test_quick_run_collapses_and_folds(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    import text_generation as tg

    if not any(tg.FORTUNES.glob("*")):
        pytest.skip(f"no fortunes in {tg.FORTUNES} (apt-get install fortunes)")
    result = run_benchmark("text_generation", ["--quick"], tmp_path)
    by = {v["variant"]: v for v in result["variants"]}
    assert list(by) == ["vanilla", "LC k=1"]
    assert by["vanilla"]["fold"]["folded"] == 0
    lc = by["LC k=1"]
    assert lc["fold"]["folded"] == 1 and lc["max_slope_deviation"] == 0.0
    assert lc["folded_model"]["params"] < lc["exported"]["params"]
    assert lc["folded_model"]["flops_per_window"] < lc["exported"]["flops_per_window"]
    assert abs(lc["folded_model"]["nll"] - lc["exported"]["nll"]) < 1e-4
    assert lc["max_abs_logit_diff"] < 1e-3
    for v in by.values():
        assert 1.0 < v["exported"]["perplexity"] < 2 * result["corpus"]["vocab"]
        assert v["throughput"]["1"]["tokens_per_s"] > 0
    assert "| LC k=1 | 1/2 |" in (tmp_path / "text_generation.md").read_text()

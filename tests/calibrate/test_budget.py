"""The budgeted greedy pass (``lconnx.collapse_with_budget``) and its command line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from graphs import mlp_matmul, run
from test_affine_fit import act_mlp

from lconnx import collapse_with_budget
from lconnx.calibrate.measure import embedding_error
from lconnx.cli import main
from lconnx.errors import LconnxError
from lconnx.render.budget import curve_markdown


def _data(m: onnx.ModelProto, n: int = 300, seed: int = 0):
    x = np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)
    labels = run(m, {"x": x})[0].argmax(-1)  # the original is 100% accurate on these
    return {"x": x}, labels


def _accuracy(m: onnx.ModelProto, feeds, labels) -> float:
    return 100.0 * float(np.mean(run(m, feeds)[0].argmax(-1) == labels))


@pytest.mark.parametrize("budget", [0.5, 5.0, 30.0])
def test_accuracy_budget_is_respected_in_onnxruntime(budget):
    m = act_mlp("Relu", out=4, layers=3)
    feeds, labels = _data(m)
    seen = []
    result = collapse_with_budget(
        m,
        feeds,
        labels=labels,
        max_accuracy_drop=budget,
        threads=1,
        chunk=100,
        on_step=lambda point, model: seen.append((point["step"], _accuracy(model, feeds, labels))),
    )
    drop = 100.0 - _accuracy(result.model, feeds, labels)
    assert drop <= budget
    assert seen[0] == (0, 100.0) and len(seen) == 1 + result.report.folded
    assert seen[-1][1] == pytest.approx(100.0 - drop)
    info = result.report.budget
    assert info["metric"] == "accuracy_drop" and info["limit"] == budget
    assert info["final"]["loss"] == pytest.approx(drop)
    assert len(info["candidates"]) == 2
    taken = [p for p in info["curve"] if p["accepted"] and p["step"]]
    assert info["final"]["sites_taken"] == len(taken) == result.report.folded
    flops = [p["flops"] for p in info["curve"] if p["accepted"]]
    assert flops == sorted(flops, reverse=True)  # each taken site lowers FLOPs
    onnx.checker.check_model(result.model, full_check=True)


def test_a_site_that_breaks_the_budget_is_skipped_with_its_reason():
    m = act_mlp("Relu", out=4, layers=3)
    feeds, _ = _data(m)
    result = collapse_with_budget(m, feeds, max_embedding_error=1e-6, threads=1)
    assert result.report.folded == 0
    sites = [s for s in result.report.sites if "affine fit" in s.reason]
    assert len(sites) == 2 and all(not s.folded for s in sites)
    assert all("alone it costs" in s.reason and "> budget 1e-06" in s.reason for s in sites)
    np.testing.assert_array_equal(run(result.model, feeds)[0], run(m, feeds)[0])


def test_cumulative_effect_is_remeasured_and_a_site_can_be_refused_late():
    m = act_mlp("Relu", out=4, layers=3)
    feeds, _ = _data(m)
    loose = collapse_with_budget(m, feeds, max_embedding_error=1.0, threads=1).report.budget
    alone = sorted(c["alone"]["loss"] for c in loose["candidates"])
    both = loose["final"]["loss"]
    assert loose["final"]["sites_taken"] == 2 and both > alone[-1]
    limit = (alone[-1] + both) / 2  # each fits alone, the two together do not
    tight = collapse_with_budget(m, feeds, max_embedding_error=limit, threads=1)
    info = tight.report.budget
    assert info["final"]["sites_taken"] == 1 and info["final"]["loss"] <= limit
    refused = [p for p in info["curve"] if not p["accepted"]]
    assert len(refused) == 1 and refused[0]["note"].startswith("would make embedding_error")
    assert refused[0]["loss"] > limit
    # the greedy order: most FLOPs saved per unit of error first
    ratios = {c["site"]: c["flops_per_loss"] for c in info["candidates"]}
    tried = [p["site"] for p in info["curve"][1:]]
    assert [ratios[s] for s in tried] == sorted(ratios.values(), reverse=True)
    assert "| step |" in curve_markdown(info)


def test_exact_folds_run_first_and_are_not_budget_candidates():
    m = mlp_matmul([8, 32, 8], slope=1.0)  # a near-identity PReLU: folded exactly
    x = np.random.default_rng(0).standard_normal((4, 3, 8)).astype(np.float32)
    result = collapse_with_budget(m, {"x": x}, max_embedding_error=0.0, threads=1)
    assert result.report.folded == 1 and result.report.budget["candidates"] == []
    assert result.report.budget["final"]["loss"] < 1e-9


def test_embedding_error_is_one_minus_mean_cosine_per_sample():
    ref = {"e": np.array([[1.0, 0.0], [0.0, 2.0]])}
    assert embedding_error(ref, ref) == 0.0
    rotated = {"e": np.array([[0.0, 1.0], [0.0, 5.0]])}  # cos 0 and cos 1
    assert embedding_error(ref, rotated) == pytest.approx(0.5)
    assert embedding_error(ref, {"e": np.array([[np.nan, 0.0], [0.0, 1.0]])}) == float("inf")


def test_api_errors():
    m = act_mlp("Relu", out=4, layers=3)
    feeds, _ = _data(m)
    with pytest.raises(LconnxError, match="needs labels"):
        collapse_with_budget(m, feeds, max_accuracy_drop=1.0)
    with pytest.raises(LconnxError, match="exactly one budget"):
        collapse_with_budget(m, feeds)


# --------------------------------------------------------------------------- command line


@pytest.fixture
def classifier(tmp_path):
    m = act_mlp("erf", out=4, layers=3)
    path = tmp_path / "m.onnx"
    onnx.save_model(m, str(path))
    feeds, labels = _data(m)
    with_labels, without = tmp_path / "calib.npz", tmp_path / "nolabels.npz"
    np.savez(with_labels, x=feeds["x"], labels=labels)
    np.savez(without, x=feeds["x"])
    return path, with_labels, without


def _one_line_error(capsys, code: int, expected: str) -> None:
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and expected in err, err


def test_cli_optimize_with_accuracy_budget_writes_model_and_curve(classifier, tmp_path, capsys):
    path, calib, _ = classifier
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    args = ["optimize", str(path), str(out), "--data", str(calib), "--report", str(report)]
    assert main([*args, "--max-accuracy-drop", "2"]) == 0
    text = capsys.readouterr().out
    assert "budget: accuracy_drop ≤ 2" in text and "GELU (Erf form)" in text
    data = json.loads(report.read_text())
    assert data["budget"]["curve"][0]["note"] == "exact folds only"
    feeds, labels = dict(np.load(calib)), np.load(calib)["labels"]
    feeds.pop("labels")
    assert 100.0 - _accuracy(onnx.load(str(out)), feeds, labels) <= 2.0


def test_cli_budget_errors_are_one_line_and_write_nothing(classifier, tmp_path, capsys):
    path, calib, without = classifier
    out = tmp_path / "out.onnx"
    base = ["optimize", str(path), str(out)]
    code = main([*base, "--data", str(without), "--max-accuracy-drop", "1"])
    _one_line_error(capsys, code, "--max-accuracy-drop needs labels")
    missing = str(tmp_path / "nope.npz")
    code = main([*base, "--data", missing, "--max-embedding-error", "0.1"])
    _one_line_error(capsys, code, "no such file")
    code = main([*base, "--max-embedding-error", "0.1"])
    _one_line_error(capsys, code, "need calibration --data")
    assert not out.exists()
    with pytest.raises(SystemExit) as exc:
        main([*base, "--data", str(calib), "--max-accuracy-drop", "-1"])
    assert exc.value.code == 2 and not out.exists()

"""End to end on real data (sklearn's bundled digits, no download).

A widening MLP 64 -> 256 -> 256 -> 64 -> 10 has its last two blocks made collapsible and
is trained three times from the same seed: without the regulariser, with the coupled
penalty and with the decoupled update. The regularised runs must drive every slope to
within 0.01 of 1 while test accuracy stays within 1 point of the unregularised run; the
result must then fold both in PyTorch and through the ONNX pass (``lconnx.collapse``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lconnx
from lconnx.training import (
    CollapsiblePReLU,
    LayerCollapseRegularizer,
    collapse_,
    export_onnx,
    make_collapsible,
    param_groups,
    progressive_collapse,
)

sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="needs scikit-learn (dev extra)")
sklearn_split = pytest.importorskip("sklearn.model_selection")

EPOCHS = 40
BATCH = 64
LR = 3e-3
SLOPE_LR = 1e-2
STRENGTH = 20.0
COLLAPSIBLE = ["3", "6"]  # the activations of the last two blocks


@dataclass
class Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass
class Run:
    model: nn.Module
    reg: LayerCollapseRegularizer
    accuracy: float


def widening_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(256, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def accuracy(model: nn.Module, data: Digits) -> float:
    model.eval()
    with torch.no_grad():
        return (model(data.x_test).argmax(1) == data.y_test).double().mean().item() * 100


def epoch_batches(data: Digits, generator: torch.Generator):
    perm = torch.randperm(len(data.x_train), generator=generator)
    for i in range(0, len(perm), BATCH):
        idx = perm[i : i + BATCH]
        yield data.x_train[idx], data.y_train[idx]


def train(data: Digits, strength: float, mode: str) -> Run:
    torch.manual_seed(0)
    model = widening_mlp()
    report = make_collapsible(model, blocks=2, init=0.01)
    assert report.selected == COLLAPSIBLE
    steps_per_epoch = -(-len(data.x_train) // BATCH)
    reg = LayerCollapseRegularizer(
        model, strength, "linear_warmup", warmup_steps=2 * steps_per_epoch
    )
    opt = torch.optim.AdamW(param_groups(model, 1e-4, slope_lr=SLOPE_LR), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS * steps_per_epoch)
    gen = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        model.train()
        for xb, yb in epoch_batches(data, gen):
            loss = F.cross_entropy(model(xb), yb)
            if mode == "coupled":
                loss = loss + reg.loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if mode == "decoupled":
                reg.decoupled_step(LR)
            reg.step()
    return Run(model, reg, accuracy(model, data))


@pytest.fixture(scope="module")
def data() -> Digits:
    x, y = sklearn_datasets.load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = sklearn_split.train_test_split(
        x / 16.0, y, test_size=0.25, random_state=0, stratify=y
    )
    f32 = torch.float32
    return Digits(
        torch.tensor(x_tr, dtype=f32), torch.tensor(y_tr), torch.tensor(x_te, dtype=f32),
        torch.tensor(y_te),
    )  # fmt: skip


@pytest.fixture(scope="module")
def runs(data: Digits) -> dict[str, Run]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is fastest and deterministic
    try:
        return {
            "baseline": train(data, 0.0, "coupled"),
            "coupled": train(data, STRENGTH, "coupled"),
            "decoupled": train(data, STRENGTH, "decoupled"),
        }
    finally:
        torch.set_num_threads(threads)


def test_baseline_learns_and_its_slopes_stay_far_from_one(runs, data):
    base = runs["baseline"]
    assert base.accuracy > 95.0
    deviations = [float((1 - a).abs().min()) for a in base.reg.slopes().values()]
    assert min(deviations) > 0.2, deviations
    report = collapse_(copy.deepcopy(base.model))
    assert report.folded == []
    assert sorted(s.name for s in report.skipped if "exceeds tolerance" in s.reason) == [
        *COLLAPSIBLE
    ]


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_regulariser_drives_slopes_to_one_without_losing_accuracy(runs, mode):
    run, base = runs[mode], runs["baseline"]
    assert run.reg.report().max_deviation <= 0.01
    assert abs(run.accuracy - base.accuracy) <= 1.0, (run.accuracy, base.accuracy)


def test_collapse_in_pytorch(runs, data):
    run = runs["coupled"]
    model = copy.deepcopy(run.model)
    report = collapse_(model)
    assert sorted(f.name for f in report.folded) == COLLAPSIBLE
    assert not any(isinstance(m, CollapsiblePReLU) for m in model.modules())
    assert model[2].weight.shape == (10, 256)  # 256 -> 256 -> 64 -> 10 became 256 -> 10
    before = sum(p.numel() for p in run.model.parameters())
    assert sum(p.numel() for p in model.parameters()) == before - report.params_saved
    assert abs(accuracy(model, data) - run.accuracy) <= 0.5


def ort_logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_pass_folds_every_regularised_block(runs, data, tmp_path, dynamo):
    run = runs["coupled"]
    path = export_onnx(run.model, data.x_test[:8], tmp_path / "digits.onnx", dynamo=dynamo)
    result = lconnx.collapse(str(path))
    prelu_sites = [s for s in result.report.sites if "PRelu" in s.ops]
    assert len(prelu_sites) == len(COLLAPSIBLE), result.report.sites
    assert all(s.folded for s in prelu_sites), [s.reason for s in prelu_sites]
    assert result.report.folded == len(COLLAPSIBLE)
    assert "PRelu" not in {n.op_type for n in result.model.graph.node}

    logits = ort_logits(result.model, data.x_test.numpy())
    onnx_accuracy = (logits.argmax(1) == data.y_test.numpy()).mean() * 100
    assert abs(onnx_accuracy - run.accuracy) <= 0.5, (onnx_accuracy, run.accuracy)
    # The ONNX pass and collapse_ fold the same algebra.
    folded_torch = copy.deepcopy(run.model)
    collapse_(folded_torch)
    with torch.no_grad():
        expected = folded_torch.eval()(data.x_test).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_onnx_pass_leaves_unregularised_slopes_alone(runs, data, tmp_path):
    path = export_onnx(runs["baseline"].model, data.x_test[:8], tmp_path / "base.onnx")
    result = lconnx.collapse(str(path))
    prelu_sites = [s for s in result.report.sites if "PRelu" in s.ops]
    assert prelu_sites and not any(s.folded for s in prelu_sites)
    assert result.report.folded == 0


def test_progressive_collapse_on_digits(runs, data):
    base = runs["baseline"]
    model = copy.deepcopy(base.model)
    gen = torch.Generator().manual_seed(1)

    def train_one_epoch(epoch: int) -> None:
        # fresh optimiser every epoch: folding replaces modules between epochs
        opt = torch.optim.AdamW(param_groups(model, 1e-4, slope_lr=SLOPE_LR), lr=1e-3)
        model.train()
        for xb, yb in epoch_batches(data, gen):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = progressive_collapse(
            model, train_one_epoch, epochs_per_block=4, strength=STRENGTH, tolerance=0.05
        )
    finally:
        torch.set_num_threads(threads)
    assert report.folded == ["6", "3"]  # output end first
    assert [s.epochs for s in report.steps] == [4, 4]
    assert isinstance(model[2], nn.Linear) and model[2].weight.shape == (10, 256)
    assert abs(accuracy(model, data) - base.accuracy) <= 1.0

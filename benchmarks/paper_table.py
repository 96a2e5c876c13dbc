"""The LayerCollapse paper's table (arXiv 2311.17943), measured here on real data through lconnx.

    python benchmarks/paper_table.py [--out benchmarks/results] [--epochs 3] [--finetune-epochs 2]
                                     [--train-size 10000] [--rows vgg mixer vit minilm gpt2]
                                     [--quick]

Every row goes through lconnx's own pipeline: train in PyTorch (``models/recipe.py``), make the
chosen MLP blocks collapsible and pull their PReLU slopes to 1 with
``lconnx.training.LayerCollapseRegularizer`` (decoupled update, as in the paper), export with
``lconnx.training.export_onnx``, fold with ``lconnx.collapse`` (the engine of ``lconnx
optimize``, default tolerance 0.05), then measure on the ONNX models with onnxruntime:
held-out accuracy of the original and of the collapsed model, parameters, FLOPs per sample
(``lconnx.graph.flops``) and CPU latency (``lconnx.runtime.bench``).

Rows: VGG-style CNN on Fashion-MNIST (head collapsed), MLP-Mixer and ViT on Fashion-MNIST (last
k blocks' MLPs collapsed, k = 0..depth) and the pretrained all-MiniLM-L6-v2 fine-tuned on VADER
word polarity (top k FFN blocks). The text-generation row (``gpt2``: a GPT-2-architecture model
on Debian's ``fortunes`` corpus, perplexity and characters/s) is ``benchmarks/text_generation.py``,
run from here with its own budget and written beside the table. Each image / MiniLM row has the
same budget for every variant:

* phase 1: ``--epochs`` epochs of plain training (AdamW, no weight decay) from the seeded
  initialisation (MiniLM: from the pretrained encoder) — the shared starting checkpoint;
* phase 2: ``--finetune-epochs`` epochs from that checkpoint, cosine learning-rate decay:
  ``vanilla`` (no regulariser; k = 0 of the sweep), ``LC k`` (regulariser on k blocks, then
  collapsed), ``KD`` (the collapsed architecture — those k MLPs replaced by one fresh Linear —
  distilled from the vanilla model), ``L1 prune`` (``torch.nn.utils.prune.global_unstructured``
  L1 on the same Linear layers down to the collapsed model's parameter count, then fine-tuned
  with the masks kept);
* ``weight decay``: both phases again from the initialisation with AdamW weight decay 0.05.

Writes ``OUT/paper_table.json`` and ``OUT/paper_table.md``. ``--quick`` (tiny subsets, one
epoch per phase, a 2-layer MiniLM) checks the whole pipeline in well under a minute.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))  # text_generation.py beside this file

import lconnx  # noqa: E402
from lconnx.graph import (  # noqa: E402
    count_flops,
    parameter_count,
)
from lconnx.io import save_model  # noqa: E402
from lconnx.runtime import (  # noqa: E402
    benchmark,
    machine_info,
    make_session,
)
from lconnx.training import (  # noqa: E402
    LayerCollapseRegularizer,
    export_onnx,
    make_collapsible,
    param_groups,
)
from models.data import Dataset, DatasetUnavailable, load_fashion_mnist, load_vader  # noqa: E402
from models.recipe import train  # noqa: E402

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning)

VGG_PARAM_GOAL = 0.70  # ≥ 70% fewer parameters …
VGG_DROP_GOAL = 0.5  # … with at most 0.5 points lower accuracy
MLP_PARAM_GOAL = 0.25  # transformers: ≥ 25% fewer MLP parameters …
MLP_DROP_GOAL = 1.0  # … with at most 1 point lost
WEIGHT_DECAY = 0.05  # the weight-decay baseline (the recipe's default)
KD_TEMPERATURE = 2.0
KD_WEIGHT = 1.0  # loss = CE + KD_WEIGHT · T² · KL(teacher ‖ student)


# --------------------------------------------------------------------------- settings


@dataclass
class Settings:
    """Everything that changes the numbers; stored in the JSON next to them."""

    epochs: int = 3  # phase 1
    finetune_epochs: int = 2  # phase 2
    train_size: int | None = 10_000  # Fashion-MNIST training subset (None: all 60,000)
    test_size: int | None = None  # Fashion-MNIST test subset (None: all 10,000)
    text_train_size: int | None = None  # VADER words (None: all 5,442)
    batch_size: int = 128
    lr: float = 1e-3  # image models
    text_lr: float = 2e-4  # MiniLM (top layers + fresh head)
    pull: float = 0.2  # LC: fraction of (a − 1) removed per step at the peak learning rate
    warmup_fraction: float = 0.4  # LC: regulariser strength ramps up over this part of phase 2
    tolerance: float = lconnx.DEFAULT_TOLERANCE
    minilm_layers: int = 6
    minilm_trainable: int = 3  # top layers fine-tuned (the rest and the embeddings frozen)
    max_length: int = 8  # tokens per word, [CLS] and [SEP] included
    repeat: int = 30  # latency runs per model and batch
    bench_batches: tuple[int, ...] = (1, 64)
    threads: int = 1
    seed: int = 0
    full_sweep: bool = True  # LC for every k = 1..depth (False: only the baselines' k)
    quick: bool = False


def quick_settings(base: Settings) -> Settings:
    """Tiny subsets and one epoch per phase: the whole pipeline in seconds."""
    return Settings(
        **{
            **asdict(base),
            "epochs": 1,
            "finetune_epochs": 1,
            "train_size": 512,
            "test_size": 256,
            "text_train_size": 256,
            "batch_size": 64,
            "minilm_layers": 2,
            "minilm_trainable": 1,
            "repeat": 2,
            "bench_batches": (1,),
            "full_sweep": False,
            "quick": True,
        }
    )


_START = time.perf_counter()


def log(row: str, message: str) -> None:
    elapsed = time.perf_counter() - _START
    print(f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {row}: {message}", flush=True)


# --------------------------------------------------------------------------- tasks


class Task:
    """One row: how to build, view, collapse-select and shrink its model, and its data.

    ``train_view(model)`` is what the recipe trains (the model itself, except for MiniLM
    whose frozen bottom is precomputed once); ``export_inputs`` are example inputs of the
    full model, ``feeds`` / ``labels`` the held-out split for onnxruntime.
    """

    key: str
    title: str
    depth: int  # number of collapsible units in the sweep
    unit: str  # what k counts
    data: Dataset  # training data of train_view
    feeds: dict[str, np.ndarray]
    labels: np.ndarray
    input_names: list[str]
    export_inputs: tuple[Tensor, ...]
    calibration: tuple[Tensor, ...]
    lr: float

    def build(self) -> nn.Module:
        raise NotImplementedError

    def train_view(self, model: nn.Module) -> nn.Module:
        return model

    def block_names(self, model: nn.Module, k: int) -> list[str]:
        """Activation modules of the MLP blocks that collapse when k units do."""
        raise NotImplementedError

    def replace_with_linear(self, model: nn.Module, k: int) -> None:
        """The collapsed architecture (for KD): those MLPs become one fresh Linear."""
        raise NotImplementedError

    def linears(self, model: nn.Module, k: int) -> list[nn.Linear]:
        """The Linear layers inside the k collapsed units (for pruning)."""
        raise NotImplementedError

    def mlp_params(self, model: nn.Module) -> int:
        """All parameters of the collapsible MLPs (the denominator of "MLP parameters")."""
        raise NotImplementedError

    def goal_k(self, model: nn.Module) -> int:
        """The k the baselines use: the fewest units giving ≥ 25% fewer MLP parameters."""
        total = self.mlp_params(model)
        for k in range(1, self.depth + 1):
            student = copy.deepcopy(model)
            self.replace_with_linear(student, k)
            if (_params(model) - _params(student)) / total >= MLP_PARAM_GOAL:
                return k
        return self.depth


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _mlp_linears(mlp: nn.Module) -> list[nn.Linear]:
    return [mlp.fc1, mlp.fc2]  # type: ignore[list-item]


class ImageTask(Task):
    """VGG / Mixer / ViT on Fashion-MNIST (``models/architectures.py``)."""

    def __init__(self, key: str, data: Dataset, settings: Settings) -> None:
        from models.architectures import build

        self._build = lambda: build(key, data.num_classes, seed=settings.seed)
        self.key = key
        name = {"vgg": "VGGSmall", "mixer": "MLP-Mixer", "vit": "ViT"}[key]
        self.title = f"{name} · Fashion-MNIST"
        self.data = data
        self.feeds = {"input": data.x_test}
        self.labels = data.y_test
        self.input_names = ["input"]
        self.export_inputs = (torch.from_numpy(data.x_test[:2]),)
        self.calibration = (torch.from_numpy(data.x_train[:256]),)
        self.lr = settings.lr
        probe = self._build()
        if key == "vgg":
            self.depth, self.unit = 2, "head blocks (from the output end)"
        else:
            self.depth = len(probe.blocks)  # type: ignore[arg-type]
            self.unit = (
                "Mixer blocks (token + channel MLP, last k)"
                if key == "mixer"
                else "ViT blocks' MLPs (last k)"
            )

    def build(self) -> nn.Module:
        return self._build()

    def _mlps(self, model: nn.Module, k: int) -> list[tuple[nn.Module, str]]:
        """(parent, attribute) of each MLP of the last k units."""
        blocks = list(model.blocks)[len(model.blocks) - k :] if k else []  # type: ignore[arg-type]
        attrs = ("mlp_tokens", "mlp_channels") if self.key == "mixer" else ("mlp",)
        return [(b, a) for b in blocks for a in attrs]

    def block_names(self, model: nn.Module, k: int) -> list[str]:
        if self.key == "vgg":
            return ["classifier.4", "classifier.1"][:k]
        names = {id(m): n for n, m in model.named_modules()}
        return [f"{names[id(getattr(p, a))]}.act" for p, a in self._mlps(model, k)]

    def replace_with_linear(self, model: nn.Module, k: int) -> None:
        torch.manual_seed(12345 + k)
        if self.key == "vgg":
            head = model.classifier
            classes = head[6].out_features
            if k == 1:  # 512 → 512 → 10 becomes 512 → 10
                linear = nn.Linear(head[3].in_features, classes)
                model.classifier = nn.Sequential(head[0], head[1], head[2], linear)
            elif k == 2:  # the whole head becomes 1568 → 10
                model.classifier = nn.Sequential(nn.Linear(head[0].in_features, classes))
            return
        for parent, attr in self._mlps(model, k):
            mlp = getattr(parent, attr)
            setattr(parent, attr, nn.Linear(mlp.fc1.in_features, mlp.fc2.out_features))

    def linears(self, model: nn.Module, k: int) -> list[nn.Linear]:
        if self.key == "vgg":
            head = model.classifier
            return [head[3], head[6]] if k == 1 else [head[0], head[3], head[6]]
        return [lin for p, a in self._mlps(model, k) for lin in _mlp_linears(getattr(p, a))]

    def mlp_params(self, model: nn.Module) -> int:
        if self.key == "vgg":
            return _params(model.classifier)
        return sum(_params(getattr(p, a)) for p, a in self._mlps(model, self.depth))


class _Top(nn.Module):
    """The trainable top of a MiniLM classifier, fed the frozen bottom's cached output."""

    def __init__(self, model: nn.Module, start: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(list(model.bert.encoder.layer)[start:])
        self.dropout = model.dropout
        self.classifier = model.classifier

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        from models.minilm import mean_pool

        bias = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * -10000.0
        for layer in self.layers:
            hidden = layer(hidden, bias)
        return self.classifier(self.dropout(mean_pool(hidden, mask)))


class MiniLMTask(Task):
    """all-MiniLM-L6-v2 + a linear head on VADER word polarity, top layers fine-tuned."""

    def __init__(self, settings: Settings) -> None:
        from models.minilm import build_classifier, load_tokenizer, tokenize_dataset

        self.key = "minilm"
        self.title = "MiniLM-L6 · VADER polarity"
        words = load_vader(seed=settings.seed)
        if settings.text_train_size is not None:
            words = words.subset(settings.text_train_size, None, seed=settings.seed)
        tokens = tokenize_dataset(words, load_tokenizer(max_length=settings.max_length))
        self.layers = settings.minilm_layers
        self.start = settings.minilm_layers - settings.minilm_trainable
        self.depth = settings.minilm_trainable
        self.unit = "FFN blocks (top k layers)"
        self.seed = settings.seed
        self._build = lambda: build_classifier(
            words.num_classes, num_hidden_layers=self.layers, seed=settings.seed
        )
        ids, mask = tokens.x_test
        self.feeds = {"input_ids": ids, "attention_mask": mask}
        self.labels = tokens.y_test
        self.input_names = ["input_ids", "attention_mask"]
        self.export_inputs = (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2]))
        tr_ids, tr_mask = tokens.x_train
        self.calibration = (torch.from_numpy(tr_ids[:256]), torch.from_numpy(tr_mask[:256]))
        self.lr = settings.text_lr
        bottom = self._build().eval()
        self.data = Dataset(
            "vader",
            self._bottom(bottom, tokens.x_train),
            tokens.y_train,
            self._bottom(bottom, (ids[:2], mask[:2])),  # unused: evaluation runs on ONNX
            tokens.y_test[:2],
            tokens.classes,
        )

    def build(self) -> nn.Module:
        model = self._build()
        model.bert.embeddings.requires_grad_(False)
        for layer in list(model.bert.encoder.layer)[: self.start]:
            layer.requires_grad_(False)
        return model

    @torch.inference_mode()
    def _bottom(
        self, model: nn.Module, x: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hidden states after the frozen layers (eval mode), computed once per row."""
        ids, mask = (torch.from_numpy(a) for a in x)
        out = []
        for i in range(0, len(ids), 256):
            b_ids, b_mask = ids[i : i + 256], mask[i : i + 256]
            h = model.bert.embeddings(b_ids)
            bias = (1.0 - b_mask[:, None, None, :].to(h.dtype)) * -10000.0
            for layer in list(model.bert.encoder.layer)[: self.start]:
                h = layer(h, bias)
            out.append(h)
        return torch.cat(out).numpy(), x[1]

    def train_view(self, model: nn.Module) -> nn.Module:
        return _Top(model, self.start)

    def _layers(self, model: nn.Module, k: int) -> list[nn.Module]:
        layers = list(model.bert.encoder.layer)
        return layers[len(layers) - k :] if k else []

    def block_names(self, model: nn.Module, k: int) -> list[str]:
        first = self.layers - k
        return [
            f"bert.encoder.layer.{i}.intermediate.intermediate_act_fn"
            for i in range(self.layers - 1, first - 1, -1)
        ]

    def replace_with_linear(self, model: nn.Module, k: int) -> None:
        torch.manual_seed(12345 + k)
        for layer in self._layers(model, k):
            d_in = layer.intermediate.dense.in_features
            d_out = layer.output.dense.out_features
            layer.intermediate.dense = nn.Linear(d_in, d_out)
            layer.intermediate.intermediate_act_fn = nn.Identity()
            layer.output.dense = nn.Identity()

    def linears(self, model: nn.Module, k: int) -> list[nn.Linear]:
        return [
            lin
            for layer in self._layers(model, k)
            for lin in (layer.intermediate.dense, layer.output.dense)
        ]

    def mlp_params(self, model: nn.Module) -> int:
        return sum(
            _params(layer.intermediate.dense) + _params(layer.output.dense)
            for layer in model.bert.encoder.layer
        )


# --------------------------------------------------------------------------- training


class Distiller(nn.Module):
    """Wraps a student so the recipe trains it with KD: ``kd_loss`` is the ``extra_loss``.

    The teacher is kept outside the module tree, so the optimiser never sees its weights and
    ``train()`` never switches it out of eval mode.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student = student
        self._teacher = [teacher.eval()]
        self._kd: Tensor | None = None

    def forward(self, *inputs: Tensor) -> Tensor:
        logits = self.student(*inputs)
        if self.training:
            with torch.no_grad():
                target = self._teacher[0](*inputs)
            t = KD_TEMPERATURE
            self._kd = (
                KD_WEIGHT
                * t
                * t
                * F.kl_div(
                    F.log_softmax(logits / t, -1),
                    F.log_softmax(target / t, -1),
                    log_target=True,
                    reduction="batchmean",
                )
            )
        return logits

    def kd_loss(self) -> Tensor:
        assert self._kd is not None
        return self._kd


def _phase(
    task: Task,
    model: nn.Module,
    settings: Settings,
    epochs: int,
    schedule: str,
    **kwargs: Any,
) -> float:
    """One training phase of ``model`` (through the task's view); returns seconds."""
    start = time.perf_counter()
    train(
        kwargs.pop("view", None) or task.train_view(model),
        task.data,
        epochs=epochs,
        lr=task.lr,
        seed=settings.seed,
        batch_size=settings.batch_size,
        weight_decay=kwargs.pop("weight_decay", 0.0),
        schedule=schedule,  # type: ignore[arg-type]
        eval_every_epoch=False,
        threads=settings.threads,
        **kwargs,
    )
    return time.perf_counter() - start


def _steps(task: Task, settings: Settings, epochs: int) -> int:
    return epochs * math.ceil(len(task.data.y_train) / settings.batch_size)


def train_lc(task: Task, start: nn.Module, k: int, settings: Settings) -> tuple[nn.Module, dict]:
    """Phase 2 with the LayerCollapse regulariser on the last k units (decoupled update)."""
    model = copy.deepcopy(start)
    names = task.block_names(model, k)
    make_collapsible(
        model,
        blocks=names,
        init="fit",
        calibration=task.calibration,
        example_inputs=task.export_inputs,
    )
    view = task.train_view(model)
    steps = _steps(task, settings, settings.finetune_epochs)
    # decoupled: a ← a − lr·strength·2(a − 1), so `pull` of (a − 1) goes per step at peak lr
    reg = LayerCollapseRegularizer(
        view,
        settings.pull / (2.0 * task.lr),
        "linear_warmup",
        warmup_steps=max(1, int(settings.warmup_fraction * steps)),
    )

    def after_step(lr: float) -> None:
        reg.decoupled_step(lr)
        reg.step()

    seconds = _phase(
        task,
        model,
        settings,
        settings.finetune_epochs,
        "cosine",
        view=view,
        param_groups=param_groups(view, 0.0),
        after_step=after_step,
    )
    report = reg.report()
    return model, {
        "train_seconds": seconds,
        "regularized": names,
        "max_slope_deviation": report.max_deviation,
    }


def train_kd(
    task: Task, start: nn.Module, teacher: nn.Module, k: int, settings: Settings
) -> tuple[nn.Module, dict]:
    """Phase 2 of the collapsed architecture (fresh Linear for the k units), distilled."""
    student = copy.deepcopy(start)
    task.replace_with_linear(student, k)
    distiller = Distiller(task.train_view(student), task.train_view(teacher))
    seconds = _phase(
        task,
        student,
        settings,
        settings.finetune_epochs,
        "cosine",
        view=distiller,
        extra_loss=distiller.kd_loss,
    )
    return student, {"train_seconds": seconds}


def train_pruned(
    task: Task, start: nn.Module, k: int, amount: int, settings: Settings
) -> tuple[nn.Module, dict]:
    """Global L1 unstructured pruning of the k units' Linear weights, then phase 2 with the
    masks kept (``torch.nn.utils.prune``), then the masks made permanent."""
    model = copy.deepcopy(start)
    layers = task.linears(model, k)
    weights = sum(lin.weight.numel() for lin in layers)
    amount = min(amount, weights)
    prune.global_unstructured(
        [(lin, "weight") for lin in layers], pruning_method=prune.L1Unstructured, amount=amount
    )
    seconds = _phase(task, model, settings, settings.finetune_epochs, "cosine")
    for lin in layers:
        prune.remove(lin, "weight")
    zeros = sum(int((lin.weight == 0).sum()) for lin in layers)
    return model, {
        "train_seconds": seconds,
        "pruned_weights": amount,
        "pruned_fraction_of_those_layers": amount / weights,
        "zero_weights_after": zeros,
    }


# --------------------------------------------------------------------------- measuring


def ort_eval(
    path: Path, other: Path | None, task: Task, threads: int, batch: int = 500
) -> dict[str, Any]:
    """Held-out accuracy with onnxruntime (batched); with ``other`` also its accuracy, top-1
    agreement and max |logit difference| against ``path``."""
    sessions = [make_session(p, "cpu", threads=threads) for p in (path, other) if p is not None]
    preds: list[list[np.ndarray]] = [[] for _ in sessions]
    max_abs = 0.0
    n = len(task.labels)
    for i in range(0, n, batch):
        feeds = {k: v[i : i + batch] for k, v in task.feeds.items()}
        outs = [s.run(None, feeds)[0] for s in sessions]
        for p, o in zip(preds, outs, strict=True):
            p.append(o.argmax(-1))
        if len(outs) == 2:
            max_abs = max(max_abs, float(np.abs(outs[0] - outs[1]).max()))
    pred = [np.concatenate(p) for p in preds]
    result: dict[str, Any] = {"accuracy": float(np.mean(pred[0] == task.labels))}
    if other is not None:
        result["accuracy_collapsed"] = float(np.mean(pred[1] == task.labels))
        result["agreement"] = float(np.mean(pred[0] == pred[1]))
        result["max_abs_logit_diff"] = max_abs
    return result


def flops_per_sample(path: Path, task: Task) -> int:
    dims = {k: [1, *v.shape[1:]] for k, v in task.feeds.items()}
    return count_flops(onnx.load(str(path)), dims).total


def measure(
    task: Task,
    model: nn.Module,
    variant: str,
    work: Path,
    settings: Settings,
    *,
    collapse: bool,
    k: int = 0,
) -> dict[str, Any]:
    """Export → (lconnx.collapse) → onnxruntime accuracy, parameters, FLOPs."""
    model.eval()
    path = work / f"{task.key}_{variant.replace(' ', '_')}.onnx"
    export_onnx(
        model,
        task.export_inputs,
        path,
        dynamo=False,
        input_names=task.input_names,
        output_names=["logits"],
    )
    record: dict[str, Any] = {"variant": variant, "k": k, "onnx": str(path)}
    params_before = parameter_count(onnx.load(str(path)))
    record["params"] = params_before
    record["flops"] = flops_per_sample(path, task)
    if collapse:
        result = lconnx.collapse(path, tolerance=settings.tolerance)
        collapsed = work / f"{path.stem}.collapsed.onnx"
        save_model(result.model, collapsed, external=False)
        folded = [s for s in result.report.sites if s.folded]
        record.update(
            sites=len(result.report.sites),
            sites_folded=len(folded),
            skipped_reasons=sorted({s.reason for s in result.report.sites if not s.folded}),
            params_collapsed=result.report.params_after,
            flops_collapsed=flops_per_sample(collapsed, task),
            onnx_collapsed=str(collapsed),
        )
        record.update(ort_eval(path, collapsed, task, settings.threads))
    else:
        record.update(ort_eval(path, None, task, settings.threads))
        record["accuracy_collapsed"] = record["accuracy"]
        record["params_collapsed"] = params_before
        record["flops_collapsed"] = record["flops"]
    return record


# --------------------------------------------------------------------------- one row


def run_row(task: Task, settings: Settings, work: Path) -> dict[str, Any]:
    """Every variant of one row, then the goals and a latency benchmark."""
    row_start = time.perf_counter()
    model0 = task.build()
    mlp_total = task.mlp_params(model0)
    k_goal = task.goal_k(model0)
    variants: list[dict[str, Any]] = []

    log(task.key, f"phase 1: {settings.epochs} epoch(s) on {len(task.data.y_train)} samples")
    start = copy.deepcopy(model0)
    seconds_1 = _phase(task, start, settings, settings.epochs, "constant")

    vanilla = copy.deepcopy(start)
    seconds = _phase(task, vanilla, settings, settings.finetune_epochs, "cosine")
    rec = measure(task, vanilla, "vanilla", work, settings, collapse=False)
    rec.update(train_seconds=seconds_1 + seconds, blocks_collapsed=0)
    variants.append(rec)
    log(task.key, f"vanilla: accuracy {100 * rec['accuracy']:.2f}%")

    for k in range(1, task.depth + 1) if settings.full_sweep else [k_goal]:
        lc, info = train_lc(task, start, k, settings)
        rec = measure(task, lc, f"LC k={k}", work, settings, collapse=True, k=k)
        rec.update(info)
        rec["blocks_collapsed"] = _blocks_collapsed(task, rec, k)
        variants.append(rec)
        log(
            task.key,
            f"LC k={k}: max|1−a| {info['max_slope_deviation']:.3g}, folded "
            f"{rec['sites_folded']}/{rec['sites']} sites, accuracy "
            f"{100 * rec['accuracy']:.2f}% → collapsed {100 * rec['accuracy_collapsed']:.2f}%",
        )

    wd = copy.deepcopy(model0)
    seconds = _phase(task, wd, settings, settings.epochs, "constant", weight_decay=WEIGHT_DECAY)
    seconds += _phase(
        task, wd, settings, settings.finetune_epochs, "cosine", weight_decay=WEIGHT_DECAY
    )
    rec = measure(task, wd, "weight decay", work, settings, collapse=False)
    rec.update(train_seconds=seconds, blocks_collapsed=0, weight_decay=WEIGHT_DECAY)
    variants.append(rec)
    log(task.key, f"weight decay {WEIGHT_DECAY}: accuracy {100 * rec['accuracy']:.2f}%")

    student, info = train_kd(task, start, vanilla, k_goal, settings)
    rec = measure(task, student, f"KD k={k_goal}", work, settings, collapse=False, k=k_goal)
    rec.update(info, blocks_collapsed=0)
    variants.append(rec)
    log(task.key, f"KD k={k_goal}: accuracy {100 * rec['accuracy']:.2f}%")

    amount = _params(model0) - _params(student)
    pruned, info = train_pruned(task, start, k_goal, amount, settings)
    rec = measure(task, pruned, f"L1 prune k={k_goal}", work, settings, collapse=False, k=k_goal)
    rec.update(info, blocks_collapsed=0)
    # the same architecture as vanilla; count against its ONNX parameters
    rec["nonzero_params"] = variants[0]["params"] - info["zero_weights_after"]
    variants.append(rec)
    log(task.key, f"L1 prune ({amount:,} weights): accuracy {100 * rec['accuracy']:.2f}%")

    base = variants[0]
    for rec in variants:
        saved = base["params"] - rec.get("nonzero_params", rec["params_collapsed"])
        rec["param_reduction"] = saved / base["params"]
        rec["mlp_param_reduction"] = saved / mlp_total
        rec["accuracy_drop_points"] = 100.0 * (base["accuracy"] - rec["accuracy_collapsed"])

    latency = _latency(task, variants, settings)
    for rec in variants:
        for key in ("onnx", "onnx_collapsed"):
            rec.pop(key, None)
    row = {
        "key": task.key,
        "title": task.title,
        "unit": task.unit,
        "depth": task.depth,
        "k_goal": k_goal,
        "mlp_params": mlp_total,
        "train_samples": len(task.data.y_train),
        "test_samples": len(task.labels),
        "variants": variants,
        "latency": latency,
        "seconds": time.perf_counter() - row_start,
    }
    row["goal"] = _goal(task, row)
    row["comparisons"] = _comparisons(row)
    log(
        task.key,
        f"done in {row['seconds']:.0f} s; goal {'met' if row['goal']['met'] else 'missed'}",
    )
    return row


def _blocks_collapsed(task: Task, rec: dict[str, Any], k: int) -> int:
    """Units fully folded: all sites of the k units must fold (a Mixer block has two)."""
    per_unit = 2 if task.key == "mixer" else 1
    if task.key == "vgg":  # a chain of k head blocks folds as k sites
        return min(k, rec["sites_folded"])
    return rec["sites_folded"] // per_unit


def _latency(task: Task, variants: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """ORT CPU latency of the vanilla model against every collapsed / student / pruned one."""
    models, names = [], []
    for rec in variants:
        if rec["variant"] == "weight decay":
            continue  # the vanilla architecture
        path = rec.get("onnx_collapsed") or rec["onnx"]
        models.append(path)
        names.append(rec["variant"])
    log(task.key, f"latency: {len(models)} models × batches {list(settings.bench_batches)}")
    bench = benchmark(
        models,
        names=names,
        batches=list(settings.bench_batches),
        threads=settings.threads,
        repeat=settings.repeat,
        warmup=3,
    )
    table: dict[str, dict[str, Any]] = {}
    for t in bench.timings:
        table.setdefault(t.model, {})[str(t.batch)] = {
            "p50_ms": t.p50_ms,
            "speedup": t.speedup,
            "ideal_speedup": t.ideal_speedup,
        }
    for rec in variants:
        rec["latency_ms"] = {b: v["p50_ms"] for b, v in table.get(rec["variant"], {}).items()}
    return {"settings": bench.settings, "by_model": table}


def _goal(task: Task, row: dict[str, Any]) -> dict[str, Any]:
    """Met or missed, from the measured numbers only."""
    lc = [v for v in row["variants"] if v["variant"].startswith("LC")]
    if task.key == "vgg":
        full = next(v for v in lc if v["k"] == task.depth)
        met = (
            full["param_reduction"] >= VGG_PARAM_GOAL
            and full["accuracy_drop_points"] <= VGG_DROP_GOAL
        )
        return {
            "text": f"head fully collapsed: ≥ {VGG_PARAM_GOAL:.0%} fewer parameters with ≤ "
            f"{VGG_DROP_GOAL} points lower accuracy than vanilla",
            "met": bool(met),
            "variant": full["variant"],
            "param_reduction": full["param_reduction"],
            "accuracy_drop_points": full["accuracy_drop_points"],
            "blocks_collapsed": full["blocks_collapsed"],
        }
    ok = [
        v
        for v in lc
        if v["mlp_param_reduction"] >= MLP_PARAM_GOAL and v["accuracy_drop_points"] <= MLP_DROP_GOAL
    ]
    best = max(ok, key=lambda v: v["mlp_param_reduction"]) if ok else None
    at_goal = next((v for v in lc if v["k"] == row["k_goal"]), None)
    shown = best or at_goal
    return {
        "text": f"≥ {MLP_PARAM_GOAL:.0%} fewer MLP parameters with ≤ {MLP_DROP_GOAL} point lost",
        "met": best is not None,
        "variant": shown["variant"] if shown else None,
        "mlp_param_reduction": shown["mlp_param_reduction"] if shown else None,
        "accuracy_drop_points": shown["accuracy_drop_points"] if shown else None,
        "blocks_collapsed": shown["blocks_collapsed"] if shown else None,
    }


def _comparisons(row: dict[str, Any]) -> dict[str, Any]:
    """LC at the baselines' k against weight decay, KD and pruning (accuracy points)."""
    by = {v["variant"]: v for v in row["variants"]}
    k = row["k_goal"]
    lc = by.get(f"LC k={k}")
    if lc is None:
        return {}
    out = {}
    for name, key in (
        ("weight_decay", "weight decay"),
        ("kd", f"KD k={k}"),
        ("prune", f"L1 prune k={k}"),
    ):
        other = by[key]
        # LC as a regulariser: its uncollapsed accuracy; as compression: the collapsed one
        mine = lc["accuracy"] if name == "weight_decay" else lc["accuracy_collapsed"]
        out[name] = {
            "lc_accuracy": mine,
            "other_accuracy": other["accuracy"],
            "lc_minus_other_points": 100.0 * (mine - other["accuracy"]),
        }
    return out


# --------------------------------------------------------------------------- output


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def to_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# LayerCollapse paper table, measured with lconnx",
        "",
        "Generated by `python benchmarks/paper_table.py"
        + (" --quick" if s["quick"] else "")
        + "`; every number below is measured by that run (nothing is copied from the paper).",
        "",
        "Pipeline per model: train in PyTorch → `make_collapsible` + `LayerCollapseRegularizer` "
        "(decoupled, slopes pulled to 1) → `export_onnx` → `lconnx.collapse` (the engine of "
        f"`lconnx optimize`, tolerance {s['tolerance']}) → onnxruntime on the ONNX files: "
        "held-out accuracy of the original and the collapsed model, parameters (ONNX "
        "initializers), FLOPs per sample (`lconnx.graph.flops`), CPU latency p50 "
        "(`lconnx.runtime.bench`, "
        f"{s['threads']} intra-op thread(s), {s['repeat']} interleaved runs).",
        "",
        "Budget, the same for every variant of a row: phase 1 = "
        f"{s['epochs']} epoch(s) of plain AdamW from the seeded initialisation (shared "
        f"checkpoint), phase 2 = {s['finetune_epochs']} epoch(s) from it with cosine decay: "
        "**vanilla** (no regulariser), **LC k** (regulariser on the last k units, then "
        "collapsed), **KD** (the collapsed architecture — those MLPs replaced by one freshly "
        f"initialised Linear — trained with CE + T²·KL, T = {KD_TEMPERATURE}, from the vanilla "
        "teacher), **L1 prune** (`prune.global_unstructured` L1 on the same Linear layers "
        "down to the collapsed model's parameter count, then phase 2 fine-tuning with the "
        f"masks kept); **weight decay** = both phases again with AdamW weight decay "
        f"{WEIGHT_DECAY} (all others use none). Seed {s['seed']}.",
        "",
        "Data: Fashion-MNIST (Debian `dataset-fashion-mnist`): a seeded subset of the standard "
        "training split, evaluated on the standard test split (or a seeded subset of it); VADER "
        "lexicon words with |rating| ≥ 0.5 and their polarity, seeded stratified split; the "
        "sample counts are in each row's section below. WordPiece "
        f"tokens padded/truncated to {s['max_length']}. MiniLM: the pretrained "
        f"all-MiniLM-L6-v2 ({s['minilm_layers']} layers), embeddings and the bottom "
        f"{s['minilm_layers'] - s['minilm_trainable']} layers frozen (their output computed "
        f"once), the top {s['minilm_trainable']} layers and a fresh linear head fine-tuned.",
        "",
        f"Machine: {result['machine']}. Total wall time {result['seconds'] / 60:.1f} min "
        f"(torch {s['threads']} thread(s)). Load average at start {result['load_start']}, at "
        f"end {result['load_end']}"
        + (
            " — the machine was shared with other jobs during the run, so timings (training "
            "seconds, latency) are noisier than on an idle machine."
            if result["shared"]
            else "."
        ),
        "",
        "Columns: *params* / *FLOPs* are of the model as deployed (collapsed where it "
        "folded; for pruning the non-zero parameters, its ONNX file stays dense); *Δ acc* is "
        "the deployed model's held-out accuracy minus vanilla's, in points; *MLP −* is the "
        "share of the collapsible MLP parameters removed; *train s* is the variant's own "
        "training (vanilla and weight decay include phase 1, which LC, KD and pruning start "
        "from). Accuracies are below what these models reach with full data and long "
        "schedules: every variant has the same small budget, and the comparisons are within it.",
        "",
        "## Goals",
        "",
    ]
    for row in result["rows"]:
        if "skipped" in row:
            lines.append(f"- **{row['title']}**: not run — {row['skipped']}")
            continue
        g = row["goal"]
        verdict = "**met**" if g["met"] else "**missed**"
        if row["key"] == "vgg":
            detail = (
                f"{_pct(g['param_reduction'])} fewer parameters, accuracy "
                f"{_signed(-g['accuracy_drop_points'])} points ({g['variant']}, "
                f"{g['blocks_collapsed']} of {row['depth']} head blocks collapsed)"
            )
        elif g["variant"] is None:
            detail = "no LC variant ran"
        else:
            detail = (
                f"best: {g['variant']} ({g['blocks_collapsed']} of {row['depth']} "
                f"{row['unit']} collapsed), "
                f"{_pct(g['mlp_param_reduction'])} fewer MLP parameters, accuracy "
                f"{_signed(-g['accuracy_drop_points'])} points"
            )
        lines.append(f"- **{row['title']}** — goal {g['text']}: {verdict}. Measured: {detail}.")
    lines += [
        "",
        "## Where LayerCollapse wins and loses against the baselines",
        "",
        "One seed per variant: differences smaller than about two standard errors of the "
        "held-out accuracy (given per row) are within noise.",
        "",
    ]
    for row in result["rows"]:
        if "skipped" in row or not row["comparisons"]:
            continue
        c = row["comparisons"]
        k = row["k_goal"]
        parts = [
            _versus("as a regulariser (uncollapsed LC vs weight decay)", c["weight_decay"]),
            _versus(f"collapsed LC k={k} vs KD into the same architecture", c["kd"]),
            _versus(f"collapsed LC k={k} vs L1 pruning to the same parameter count", c["prune"]),
        ]
        base = row["variants"][0]["accuracy"]
        se = 100.0 * math.sqrt(base * (1.0 - base) / row["test_samples"])
        lines.append(
            f"- **{row['title']}** (standard error ≈ {se:.2f} points): " + "; ".join(parts) + "."
        )
    for row in result["rows"]:
        if "skipped" in row:
            continue
        lines += ["", f"## {row['title']}", ""]
        lines.append(
            f"k counts {row['unit']}; {row['train_samples']:,} training / "
            f"{row['test_samples']:,} held-out samples; MLP parameters in the model: "
            f"{row['mlp_params']:,}; baselines at k = {row['k_goal']}; row time "
            f"{row['seconds'] / 60:.1f} min."
        )
        lines.append("")
        batches = [str(b) for b in s["bench_batches"]]
        head = (
            "| variant | collapsed | params | MLP − | FLOPs/sample | acc original | "
            "acc deployed | Δ acc | "
            + " | ".join(f"p50 b{b} (speedup)" for b in batches)
            + " | train s |"
        )
        lines += [head, "|" + "---|" * (9 + len(batches))]
        for v in row["variants"]:
            params = v.get("nonzero_params", v["params_collapsed"])
            collapsed = (
                f"{v['blocks_collapsed']}/{v['k']} ({v['sites_folded']}/{v['sites']} sites)"
                if "sites" in v
                else "—"
            )
            lat = row["latency"]["by_model"].get(v["variant"], {})
            cells = []
            for b in batches:
                t = lat.get(b)
                cells.append("—" if t is None else f"{t['p50_ms']:.3f} ms ({t['speedup']:.2f}×)")
            acc_orig = _pct(v["accuracy"])
            lines.append(
                f"| {v['variant']} | {collapsed} | {_fmt_count(params)}"
                + (" nz" if "nonzero_params" in v else "")
                + f" | {_pct(v['mlp_param_reduction'])} | {_fmt_count(v['flops_collapsed'])} "
                f"| {acc_orig} | {_pct(v['accuracy_collapsed'])} | "
                f"{_signed(-v['accuracy_drop_points'])} | "
                + " | ".join(cells)
                + f" | {v['train_seconds']:.0f} |"
            )
        lc = [v for v in row["variants"] if v["variant"].startswith("LC")]
        notes = [
            f"{v['variant']}: max|1 − a| after training {v['max_slope_deviation']:.3g}, "
            f"top-1 agreement original/collapsed {_pct(v['agreement'])}, max |Δlogit| "
            f"{v['max_abs_logit_diff']:.3g}"
            + (f"; not folded: {', '.join(v['skipped_reasons'])}" if v["skipped_reasons"] else "")
            for v in lc
        ]
        lines += ["", *[f"- {n}" for n in notes]]
    text = result.get("text_generation")
    if text is not None:
        lines += ["", "## Text generation (GPT-2 architecture)", ""]
        if "skipped" in text:
            lines.append(f"Not run — {text['skipped']}")
        else:  # text_generation.md without its title
            lines += text["markdown"].split("\n", 2)[2].rstrip("\n").split("\n")
    return "\n".join(lines) + "\n"


def _signed(points: float) -> str:
    return f"{points + 0.0:+.2f}"  # + 0.0: no "-0.00"


def _versus(what: str, c: dict[str, float]) -> str:
    diff = c["lc_minus_other_points"]
    word = "LC wins" if diff > 0 else ("tie" if diff == 0 else "LC loses")
    return (
        f"{what}: {word} ({_pct(c['lc_accuracy'])} vs {_pct(c['other_accuracy'])}, "
        f"{_signed(diff)} points)"
    )


# --------------------------------------------------------------------------- main


def _load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def make_task(key: str, settings: Settings, fashion: Dataset | None) -> Task:
    if key == "minilm":
        return MiniLMTask(settings)
    assert fashion is not None
    return ImageTask(key, fashion, settings)


def _text_generation(settings: Settings, out: Path) -> dict[str, Any]:
    """The text-generation row: ``benchmarks/text_generation.py`` with its own step budget
    (``--quick`` maps to its quick settings), its JSON / Markdown written to ``out``."""
    import text_generation as tg

    tg_settings = tg.Settings(threads=settings.threads, seed=settings.seed)
    if settings.quick:
        tg_settings = tg.quick_settings(tg_settings)
    log("gpt2", "GPT-2 architecture · fortunes corpus (benchmarks/text_generation.py)")
    try:
        result = tg.run(tg_settings, out)
    except tg.CorpusUnavailable as exc:
        log("gpt2", f"skipped: {exc}")
        return {"skipped": str(exc)}
    return {"markdown": tg.to_markdown(result), "variants": result["variants"]}


def run(settings: Settings, rows: list[str], out: Path, keep: Path | None = None) -> dict:
    """Run the rows and write ``out/paper_table.{json,md}``; returns the JSON data."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_start = _load_avg()
    machine = machine_info()
    fashion: Dataset | None = None
    results = []
    text_generation: dict[str, Any] | None = None
    work = Path(tempfile.mkdtemp(prefix="paper_table_")) if keep is None else keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        torch.set_num_threads(settings.threads)
        for key in rows:
            if key == "gpt2":
                text_generation = _text_generation(settings, out)
                continue
            try:
                if key != "minilm" and fashion is None:
                    fashion = load_fashion_mnist().subset(
                        settings.train_size, settings.test_size, seed=settings.seed
                    )
                task = make_task(key, settings, fashion)
            except DatasetUnavailable as exc:  # ModelUnavailable included
                log(key, f"skipped: {exc}")
                results.append({"key": key, "title": key, "skipped": str(exc)})
                continue
            log(key, f"{task.title}: sweep k = 0..{task.depth}")
            results.append(run_row(task, settings, work))
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    load_end = _load_avg()
    cores = machine.get("logical_cpus") or os.cpu_count() or 1
    result = {
        "settings": asdict(settings),
        "seconds": time.perf_counter() - started,
        "load_start": load_start,
        "load_end": load_end,
        "shared": max([*load_start, *load_end], default=0.0) > 1.2 * settings.threads,
        "cpus": cores,
        "machine": f"{machine.get('cpu') or platform.processor()}, {cores} logical CPUs, "
        f"torch {torch.__version__}, onnxruntime {machine.get('onnxruntime')}",
        "rows": results,
    }
    if text_generation is not None:
        result["text_generation"] = text_generation
    (out / "paper_table.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "paper_table.md").write_text(to_markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=["vgg", "mixer", "vit", "minilm", "gpt2"],
        choices=["vgg", "mixer", "vit", "minilm", "gpt2"],
    )
    parser.add_argument("--epochs", type=int, help="phase-1 epochs (default 3)")
    parser.add_argument("--finetune-epochs", type=int, help="phase-2 epochs (default 2)")
    parser.add_argument("--train-size", type=int, help="Fashion-MNIST training subset")
    parser.add_argument("--test-size", type=int, help="Fashion-MNIST test subset")
    parser.add_argument("--text-train-size", type=int, help="VADER training words")
    parser.add_argument("--repeat", type=int, help="latency runs per model and batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--keep-onnx", type=Path, help="keep the ONNX files in this folder")
    parser.add_argument("--quick", action="store_true", help="tiny subsets, 1 epoch per phase")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite OUT/paper_table.md from OUT/paper_table.json without running anything",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        result = json.loads((args.out / "paper_table.json").read_text())
        (args.out / "paper_table.md").write_text(to_markdown(result))
        return 0
    settings = Settings(seed=args.seed, threads=args.threads)
    if args.quick:
        settings = quick_settings(settings)
    for name in (
        "epochs",
        "finetune_epochs",
        "train_size",
        "test_size",
        "text_train_size",
        "repeat",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(settings, name, value)
    result = run(settings, args.rows, args.out, args.keep_onnx)
    log("all", f"wrote {args.out / 'paper_table.md'} ({result['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

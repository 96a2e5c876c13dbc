"""``LayerCollapseCallback`` in a real (tiny) Hugging Face ``Trainer`` run."""

from __future__ import annotations

import copy

import lc_hf_zoo as hz
import numpy as np
import pytest
import torch

from lconnx.training import CollapsiblePReLU

T = hz.import_transformers()
from lconnx.training.hf import LayerCollapseCallback  # noqa: E402


class _Data(torch.utils.data.Dataset):
    """Random token sequences with a learnable label (is token 0 in the first half?)."""

    def __init__(self, n: int = 64, seq: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (n, seq), generator=g)
        self.labels = (self.ids[:, : seq // 2] < 32).sum(1).gt(seq // 4).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones_like(self.ids[i]),
            "labels": self.labels[i],
        }


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = T.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
    )
    return T.BertForSequenceClassification(cfg)


def _args(tmp_path, **kw) -> object:
    base = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 8,
        "max_steps": 10,
        "learning_rate": 1e-3,
        "weight_decay": 0.1,
        "logging_steps": 2,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
    }
    return T.TrainingArguments(**(base | kw))


def test_trainer_deadline_collapses_every_block_and_logs_slopes(tmp_path):
    model = _model()
    callback = LayerCollapseCallback(fold_on_train_end=True)
    trainer = T.Trainer(
        model=model, args=_args(tmp_path), train_dataset=_Data(), callbacks=[callback]
    )
    # made collapsible at Trainer init, so the optimiser trains the new slopes
    assert callback.report is not None and len(callback.report.selected) == 2
    slopes = [m.weight for m in model.modules() if isinstance(m, CollapsiblePReLU)]
    assert all(float(s.detach()) == pytest.approx(0.01) for s in slopes)

    trainer.train()

    reg = callback.regularizer
    assert reg is not None and reg.deadline_steps == 3 and reg.current_step == 10
    assert all(float(s.detach()) == 1.0 for s in slopes)  # the band ended them at exactly 1
    decayed = [g for g in trainer.optimizer.param_groups if g["weight_decay"] > 0]
    assert not any(p is s for g in decayed for p in g["params"] for s in slopes)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [2, 4, 6, 8, 10]
    # the default deadline is 30% of max_steps: the band's half-width shrinks linearly from
    # the initial gap 0.99 to 0 at step 3
    assert logged[0]["collapse/max_dev"] == pytest.approx(0.99 * 1 / 3, abs=1e-6)
    assert logged[-1]["collapse/max_dev"] == 0.0
    assert logged[-1]["collapse/linear_blocks"] == 2.0
    assert "collapse/dev/bert.encoder.layer.0.intermediate.intermediate_act_fn" in logged[-1]
    assert callback.fold_report is not None and len(callback.fold_report.folded) == 2


def test_trainer_fold_keeps_the_trained_function(tmp_path):
    model = _model()
    callback = LayerCollapseCallback(deadline_steps=4)
    trainer = T.Trainer(
        model=model, args=_args(tmp_path, max_steps=6), train_dataset=_Data(), callbacks=[callback]
    )
    trainer.train()
    batch = {"input_ids": _Data().ids[:4], "attention_mask": torch.ones(4, 8, dtype=torch.long)}
    expected = hz.run_torch(model, batch)
    folded = copy.deepcopy(model)
    from lconnx.training import collapse_

    assert len(collapse_(folded, example_inputs=batch).folded) == 2
    np.testing.assert_allclose(hz.run_torch(folded, batch), expected, rtol=1e-4, atol=1e-5)


def test_trainer_penalty_only_moves_slopes_towards_one(tmp_path):
    def final_slopes(strength: float) -> list[float]:
        model = _model()
        callback = LayerCollapseCallback(deadline_fraction=None, strength=strength)
        args = _args(tmp_path, learning_rate=0.05)  # Adam moves a slope by about lr per step
        T.Trainer(model=model, args=args, train_dataset=_Data(), callbacks=[callback]).train()
        mods = [m for m in model.modules() if isinstance(m, CollapsiblePReLU)]
        return [float(m.weight.detach()) for m in mods]

    task_only, penalised = final_slopes(0.0), final_slopes(50.0)
    assert all(p > t + 0.1 for p, t in zip(penalised, task_only, strict=True)), (
        penalised,
        task_only,
    )
    assert all(p < 1.0 for p in penalised)  # no band: the penalty alone does not end at 1


def test_optimiser_built_before_the_callback_is_an_error(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    trainer = T.Trainer(
        model=model,
        args=_args(tmp_path),
        train_dataset=_Data(),
        callbacks=[LayerCollapseCallback()],
        optimizers=(opt, sched),
    )
    with pytest.raises(RuntimeError, match="not in the optimiser"):
        trainer.train()


def _readme_block() -> str:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Hugging Face, timm and torchvision models", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README's Hugging Face section"
    return match.group(1)


def test_readme_hf_recipe_runs_and_folds_a_gpt2(tmp_path, monkeypatch, capsys):
    import lconnx

    torch.manual_seed(0)
    cfg = T.GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=2,
        vocab_size=64,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = T.GPT2LMHeadModel(cfg)

    class LmData(_Data):
        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            item = super().__getitem__(i)
            return item | {"labels": item["input_ids"]}

    batch = T.BatchEncoding(
        {"input_ids": LmData().ids[:2], "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    )
    namespace = {
        "model": model,
        "args": _args(tmp_path / "run"),
        "train_set": LmData(),
        "batch": batch,
    }
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_block(), "README.md", "exec"), namespace)
    assert "activation 'gelu_new' replaced by a PReLU" in capsys.readouterr().out
    result = lconnx.collapse(str(tmp_path / "model.onnx"))
    sites = [s for s in result.report.sites if "PRelu" in s.ops]
    assert len(sites) == 2 and all(s.folded for s in sites), result.report.sites
    np.testing.assert_allclose(
        hz.run_onnx(result.model, batch), hz.run_torch(model, batch), rtol=1e-4, atol=1e-5
    )


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="no gloo",
)
def test_trainer_callback_under_two_gloo_ranks(tmp_path):
    """torchrun launch: the Trainer wraps the model in DDP; slopes stay identical and hit 1."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    worker = Path(__file__).with_name("lc_hf_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(worker), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert len(r0["slopes"]) == 2  # unwrapped names: no "module." prefix
    for name, slope in r0["slopes"].items():
        assert "module." not in name
        assert torch.equal(slope, r1["slopes"][name]) and float(slope) == 1.0, name
    assert torch.equal(r0["classifier"], r1["classifier"])
    assert r0["max_dev"][0] > 0.5 and r0["max_dev"][3:] == [0.0, 0.0, 0.0]

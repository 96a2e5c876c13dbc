"""One rank of the two-process Trainer run in test_hf_trainer.py (launched by torchrun)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import lc_hf_zoo as hz  # noqa: E402

T = hz.import_transformers()
from lconnx.training import CollapsiblePReLU  # noqa: E402
from lconnx.training.hf import LayerCollapseCallback  # noqa: E402


class Data(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (64, 8), generator=g)
        self.labels = (self.ids[:, :4] < 32).sum(1).gt(2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def main(out: Path) -> None:
    torch.manual_seed(0)
    cfg = T.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
    )
    model = T.BertForSequenceClassification(cfg)
    args = T.TrainingArguments(
        output_dir=str(out / "run"),
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    callback = LayerCollapseCallback(deadline_steps=4)
    trainer = T.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[callback])
    trainer.train()
    rank = trainer.args.process_index
    mods = {n: m for n, m in model.named_modules() if isinstance(m, CollapsiblePReLU)}
    devs = [h["collapse/max_dev"] for h in trainer.state.log_history if "loss" in h]
    torch.save(
        {
            "world": trainer.args.world_size,
            "slopes": {n: m.weight.detach().clone() for n, m in mods.items()},
            "classifier": model.classifier.weight.detach().clone(),
            "max_dev": devs,
        },
        out / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))

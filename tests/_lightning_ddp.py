"""A PyTorch Lightning DDP run on 2 CPU ranks (gloo) over an aioloader Loader, run by
``tests/test_lightning.py`` as a script (Lightning's ``strategy="ddp"`` starts rank 1 by running
this script again). Three fits: an uninterrupted one that checkpoints mid-epoch and at the end of
a cut epoch (``limit_train_batches``), and one resumed from each checkpoint. Every rank writes
the batches its training_step saw to ``OUT/<fit>-<rank>.json``.

Usage: ``python _lightning_ddp.py OUT LIMIT MID_STEP`` (Lightning runs rank 1 with the same
arguments)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

import aioloader as al

SAMPLES, BATCH, EPOCHS = 24, 2, 2  # 6 batches per rank


class Model(L.LightningModule):
    def __init__(self, tag: str, out: Path) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.tag, self.out = tag, out
        self.seen: list[list[int]] = []
        self.loader: al.Loader | None = None

    def train_dataloader(self) -> al.Loader:
        self.loader = al.Loader.from_source(list(range(SAMPLES)), shuffle=True, seed=0).batch(BATCH)
        return self.loader

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen.append([self.current_epoch, batch_idx, *batch.tolist()])
        return self.layer(batch.float().unsqueeze(1)).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_train_end(self) -> None:
        (self.out / f"{self.tag}-{self.global_rank}.json").write_text(json.dumps(self.seen))
        if self.loader is not None:
            self.loader.close()


class Checkpoints(L.Callback):
    """A checkpoint after step ``mid_step`` (mid-epoch) and at the end of the first (cut) epoch."""

    def __init__(self, out: Path, mid_step: int) -> None:
        self.out, self.mid_step = out, mid_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.mid_step:
            trainer.save_checkpoint(self.out / "mid.ckpt")

    def on_train_epoch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.current_epoch == 0:
            trainer.save_checkpoint(self.out / "epoch_end.ckpt")


def fit(tag: str, out: Path, limit: int, mid_step: int, ckpt: Path | None = None) -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=EPOCHS,
        limit_train_batches=limit,
        callbacks=[Checkpoints(out, mid_step)] if ckpt is None else [],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Model(tag, out), ckpt_path=ckpt)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    limit, mid_step = int(sys.argv[2]), int(sys.argv[3])
    fit("full", out, limit, mid_step)
    fit("from_mid", out, limit, mid_step, out / "mid.ckpt")
    fit("from_epoch_end", out, limit, mid_step, out / "epoch_end.ckpt")

"""Supervised training on Gaussian-noised inputs (paper Eq. 4; sigma = 0 trains on clean data)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from pefts.errors import PeftsError
from pefts.hparams import BOOL, Choice, Float, Int, check_values
from pefts.progress import progress
from pefts.training import checkpoints, curves
from pefts.training.streams import KeyedSamples, noise_like, seed_step


@dataclass
class TrainConfig:
    epochs: float = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adamw"  # sgd | adam | adamw
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant
    warmup_epochs: float = 0.0
    seed: int = 0
    num_workers: int = 0
    # share of the training images held out (seeded by ``seed``) for the training-time
    # evaluation, so no choice is ever judged on the test images that get certified
    val_fraction: float = 0.1
    # minutes between checkpoints inside an epoch (one is always written at each epoch's
    # end); 0: epoch ends only
    checkpoint_minutes: float = 10.0
    # fp32, or bf16 autocast (weights and optimiser state stay fp32)
    precision: str = "fp32"
    # TF32 tensor-core matmuls on GPUs that have them (no effect on a CPU)
    tf32: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TrainConfig:
        data = dict(data or {})
        check_values("training option {name}", TRAIN_SPECS, data, known_only=True)
        return cls(**data)


TRAIN_SPECS = {
    "epochs": Float(0), "batch_size": Int(1), "lr": Float(0, low_open=True),
    "optimizer": Choice("sgd", "adam", "adamw"), "momentum": Float(0, 1, high_open=True),
    "weight_decay": Float(0), "schedule": Choice("cosine", "constant"), "warmup_epochs": Float(0),
    "seed": Int(0), "num_workers": Int(0), "val_fraction": Float(0, 1, high_open=True),
    "checkpoint_minutes": Float(0), "precision": Choice("fp32", "bf16"), "tf32": BOOL,
}

# options that change how a run is carried out, never its result (ignored by the
# checkpoint's fingerprint): augmentation is keyed by sample (pefts.training.streams), so the
# number of loader workers no longer changes the weights
CONDUCT_OPTIONS = ("checkpoint_minutes", "num_workers")


def split_validation(data: Dataset, cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    """(train, validation): a seeded random ``val_fraction`` of the training images is
    held out; the split depends only on the data size and ``cfg.seed``."""
    size = len(data)
    held = int(round(cfg.val_fraction * size))
    if held and held >= size:
        raise PeftsError(f"val_fraction {cfg.val_fraction} leaves no training image of {size}")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    return Subset(data, sorted(order[held:])), Subset(data, sorted(order[:held]))


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise PeftsError(f"unknown optimizer {cfg.optimizer!r}; use sgd, adam or adamw")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise PeftsError(f"unknown schedule {schedule!r}; use cosine or constant")


# (loss to minimise, statistics summed over the batch) for one batch of clean images
BatchLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def epoch_batches(size: int, cfg: TrainConfig, order_gen: torch.Generator
                  ) -> tuple[list[list[int]], int]:
    """One epoch's shuffled batches of indices, and the seed of its loader (workers).
    Both come from ``order_gen`` alone, so an epoch is rebuilt exactly from the
    generator's state at its start: a resumed run sees the same batches. The draws are
    DataLoader(shuffle=True)'s (its loader seed, then the permutation)."""
    loader_seed = int(torch.empty((), dtype=torch.int64).random_(generator=order_gen))
    order = torch.randperm(size, generator=order_gen).tolist()
    return [order[i:i + cfg.batch_size] for i in range(0, size, cfg.batch_size)], loader_seed


def set_matmul_precision(cfg: TrainConfig) -> None:
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32


@dataclass(frozen=True)
class Position:
    """Where a run stands after a batch: enough to rebuild the rest of the run exactly."""

    step: int  # steps done in the run
    batch: int  # batches done in this epoch (1 after the first)
    epoch_end: bool
    run_end: bool
    resume_from: torch.Tensor  # order generator state that rebuilds the rest of the epoch
    # (at an epoch's end, the next epoch's start)

    def save_due(self, checkpoint: checkpoints.Checkpoint | None) -> bool:
        """A checkpoint is written at every epoch end, at the run's end, every
        train.checkpoint_minutes and after a stop signal (Checkpoint.due)."""
        return checkpoint is not None and (self.epoch_end or self.run_end or checkpoint.due())

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "epoch_start": self.resume_from,
                "batch": 0 if self.epoch_end else self.batch}


def autocast_for(cfg: TrainConfig, device: torch.device | str) -> AbstractContextManager:
    """bf16 autocast when the recipe asks for it, else nothing."""
    if cfg.precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


def total_steps(data: Dataset, cfg: TrainConfig, epochs: float) -> int:
    """Optimiser steps of ``epochs`` epochs (a fraction allowed), at least one."""
    return max(1, int(round(epochs * math.ceil(len(data) / cfg.batch_size))))


def resumable_batches(data: Dataset, cfg: TrainConfig, total: int,
                      saved: dict[str, Any] | None = None, stream: str = "train"
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor, Position]]:
    """``total`` steps of shuffled batches, DataLoader(shuffle=True, generator=seed)'s
    order epoch after epoch, each with its Position; from a saved Position's state the
    same batches continue where they stopped. Each sample's augmentation is drawn from
    (seed, stream, epoch, index) and, before each batch is handed out, the global
    generators are seeded by (seed, stream, step) (pefts.training.streams): the batches and the
    step's noise are the same with any number of workers and after any restart."""
    order_gen = torch.Generator().manual_seed(cfg.seed)
    keyed = KeyedSamples(data, cfg.seed, stream)
    per_epoch = math.ceil(len(data) / cfg.batch_size)
    step, skip = 0, 0
    if saved is not None:
        order_gen.set_state(saved["epoch_start"])
        step, skip = saved["step"], saved["batch"]
    epoch = (step - skip) // per_epoch
    while step < total:
        epoch_start = order_gen.get_state()
        batches, loader_seed = epoch_batches(len(data), cfg, order_gen)
        keys = [[(epoch, i) for i in batch] for batch in batches[skip:]]
        rest = DataLoader(keyed, batch_sampler=keys, num_workers=cfg.num_workers,
                          worker_init_fn=checkpoints.ignore_stop_signals,
                          generator=torch.Generator().manual_seed(loader_seed))
        for batch, (x, y) in enumerate(rest, start=skip + 1):
            step += 1
            epoch_end = batch == len(batches)
            if epoch_end:
                # the draw torch's RandomSampler makes once an epoch is exhausted: the
                # order stays that of DataLoader(shuffle=True, generator=seed)
                torch.randperm(len(data), generator=order_gen)
            seed_step(cfg.seed, stream, step)
            yield x, y, Position(step, batch, epoch_end, step >= total,
                                 order_gen.get_state() if epoch_end else epoch_start)
            if step >= total:
                return
        skip = 0
        epoch += 1


def optimise(model: nn.Module, data: Dataset, cfg: TrainConfig, epochs: float,
             batch_loss: BatchLoss, device: torch.device | str, desc: str,
             stream: str = "train") -> dict[str, float]:
    """Minimise ``batch_loss`` over ``epochs`` of ``data`` with the configured optimiser
    and schedule, on the parameters that require grad; returns the last epoch's
    statistics per image. Inside checkpoints.checkpointing() it saves its state (the
    trainable tensors, optimiser, schedule and position) at every epoch end, every
    cfg.checkpoint_minutes and when the scheduler signals, and resumes from it.
    ``stream`` names the run's random streams (pefts.training.streams): a second optimise() of
    one run passes another name, so it does not replay the first one's noise."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PeftsError("nothing to train: the model has no trainable parameters")
    checkpoint, curve = checkpoints.active(), curves.active()
    if curve is not None:  # a stage finished before a kill is a stage of its curve too
        curve.begin_stage()
    done, saved = checkpoint.begin_stage() if checkpoint else (None, None)
    if done is not None:
        return done  # finished before the kill; the weights come from a later stage
    total = total_steps(data, cfg, epochs)
    warmup = int(round(cfg.warmup_epochs * math.ceil(len(data) / cfg.batch_size)))
    optimizer = make_optimizer(params, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, cfg.schedule))
    set_matmul_precision(cfg)
    autocast = autocast_for(cfg, device)
    model.to(device).train()
    seen, sums = 0, {}
    if saved is not None:
        checkpoints.restore_trainable(model, saved["model"], checkpoint.path)
        try:
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        except (KeyError, ValueError, TypeError) as err:  # torch's words for a state not this run's
            raise PeftsError(f"checkpoint {checkpoint.path}: its optimiser or schedule state does "
                             f"not fit this run ({type(err).__name__}: {str(err).splitlines()[0]}); "
                             f"{checkpoints.FIX}") from None
        seen, sums = saved["seen"], dict(saved["sums"])
    bar = progress(total=total, initial=saved["step"] if saved else 0, desc=desc, unit="step",
                   leave=False)
    clock, per_epoch = curves.EpochClock(), math.ceil(len(data) / cfg.batch_size)
    for x, y, at in resumable_batches(data, cfg, total, saved, stream):
        if at.batch == 1:
            seen, sums = 0, {}  # statistics cover the last (possibly partial) epoch only
        x, y = x.to(device), y.to(device)
        with autocast:
            loss, stats = batch_loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used
        scheduler.step()
        seen += len(x)
        clock.count(len(x))
        for key, value in stats.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.update(1)
        # refresh=False: the bar redraws on its own schedule, not at every step
        bar.set_postfix({k: f"{v / seen:.3f}" for k, v in sums.items()}, refresh=False)
        if curve is not None and (at.epoch_end or at.run_end):
            # before the checkpoint: a kill between the two recomputes the row, replacing it
            curve.add(at.step / per_epoch, at.step, {k: v / seen for k, v in sums.items()},
                      lr, clock.rate())
            clock.restart()
        if at.save_due(checkpoint):
            checkpoint.save({"model": checkpoints.trainable_tensors(model),
                             "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "seen": seen, "sums": sums,
                             **at.state()})
    bar.close()
    model.eval()
    metrics = {key: value / max(1, seen) for key, value in sums.items()}
    if checkpoint:
        checkpoint.end_stage(metrics)
    return metrics


def train_noisy(
    model: nn.Module, data: Dataset, sigma: float, cfg: TrainConfig,
    device: torch.device | str = "cpu", desc: str = "train",
) -> dict[str, float]:
    """Minimise cross-entropy of model(x + d), fresh d ~ N(0, sigma^2 I) every batch
    (drawn from the step's keyed stream, pefts.training.streams).

    Only parameters with requires_grad are optimised. Returns the last epoch's loss
    and accuracy on the noisy training inputs.
    """
    def noisy_cross_entropy(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(x + noise_like(x) * sigma)
        loss = nn.functional.cross_entropy(logits, y)
        return loss, {"train_loss": loss.item() * len(y),
                      "train_accuracy": float((logits.argmax(1) == y).sum())}

    return optimise(model, data, cfg, cfg.epochs, noisy_cross_entropy, device, desc)


@torch.inference_mode()
def noisy_accuracy(model: nn.Module, data: Dataset, sigma: float, batch_size: int = 256,
                   device: torch.device | str = "cpu", seed: int = 0) -> float:
    """Accuracy of the base model itself on x + d (not the smoothed classifier)."""
    gen = torch.Generator().manual_seed(seed)
    model.to(device).eval()
    correct = total = 0
    for x, y in DataLoader(data, batch_size=batch_size):
        noise = torch.randn(x.shape, generator=gen) * sigma
        pred = model((x + noise).to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    return correct / max(1, total)

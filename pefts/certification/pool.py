"""Certify a pool of images at once: each forward pass holds samples of many images.

An adaptive image may need only a few hundred samples, so one image per batch would
leave the device idle. The pool keeps up to ``pool`` images in flight and fills every
batch with their next samples; class counts are kept per image on the device and read
back only when some image reaches a look (one small copy per such batch).

Determinism: the noise of image idx comes only from (seed, idx, stream), drawn in pieces
fixed by that image's own look schedule (at most ``DRAW`` samples each), never by the
batch size or the pool's other images. Batching happens only at the forward pass, so
the results do not depend on shards, pool size, batch size or resuming, up to the last
bits a BLAS kernel may change with the batch's composition.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pefts.certification.adaptive import AdaptivePlan
from pefts.certification.guards import refuse_batch_dependence, refuse_training_mode
from pefts.certification.noise import ESTIMATION, SELECTION, generator

DRAW = 1024  # noise is drawn in pieces of at most this many samples (part of the stream)


@dataclass
class PoolResult:
    idx: int
    label: int
    prediction: int  # -1: abstain
    radius: float
    n_a: int
    n_used: int
    p_a_lower: float
    seconds: float


@dataclass
class _Image:
    idx: int
    label: int
    x: torch.Tensor
    slot: int
    started: float
    stage: int = SELECTION
    gen: torch.Generator | None = None
    chunks: list[int] = field(default_factory=list)  # samples of the looks still to come
    to_draw: int = 0  # samples of the current chunk not yet drawn
    to_forward: int = 0  # samples of the current chunk not yet in a batch
    pending: list[torch.Tensor] = field(default_factory=list)  # drawn, not yet forwarded
    look: int = -1
    lower: float = 0.0
    top: int = -1
    n_a: int = 0

    def start_chunk(self, size: int) -> None:
        self.to_draw = self.to_forward = size

    def take(self, k: int, device: torch.device) -> torch.Tensor:
        """The next k noise samples of this image, drawn in its own fixed pieces."""
        have = sum(len(p) for p in self.pending)
        while have < k:
            piece = min(DRAW, self.to_draw)
            self.pending.append(torch.randn((piece, *self.x.shape), generator=self.gen,
                                            device=device))
            self.to_draw -= piece
            have += piece
        noise = torch.cat(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending = [noise[k:]] if have > k else []
        self.to_forward -= k
        return noise[:k]


class Pool:
    """Runs ``plan`` on many images at once with the given model."""

    def __init__(self, model: nn.Module, num_classes: int, plan: AdaptivePlan, n0: int, seed: int,
                 device: torch.device | str, batch: int = 1000, pool: int = 32):
        if min(n0, batch, pool) < 1:
            raise ValueError("n0, batch and pool must be at least 1")
        self.model, self.num_classes, self.plan = model, num_classes, plan
        self.n0, self.seed, self.batch, self.pool = n0, seed, batch, pool
        self.device = torch.device(device)

    @torch.inference_mode()
    def run(self, images: Iterable[tuple[int, torch.Tensor, int]]) -> Iterator[PoolResult]:
        """Certify (idx, x, label) triples; yields each result as soon as it is final."""
        source = iter(images)
        refuse_training_mode(self.model)
        probed = False
        active: list[_Image] = []
        free = list(range(self.pool))
        counts = torch.zeros((self.pool, self.num_classes), dtype=torch.long, device=self.device)
        while True:
            while free and (item := next(source, None)) is not None:
                active.append(self._admit(item, free.pop(0)))
                if not probed:
                    refuse_batch_dependence(self.model, active[-1].x, self.plan.sigma)
                    probed = True
                counts[active[-1].slot] = 0
            if not active:
                return
            slots, noisy = self._fill(active)
            predictions = self.model(torch.cat(noisy)).argmax(1)
            counts.index_put_((slots, predictions), torch.ones_like(predictions), accumulate=True)
            looking = [im for im in active if im.to_forward == 0]
            if not looking:
                continue
            # the one host sync of this batch: counts of the images at a look
            rows = counts[[im.slot for im in looking]].cpu().numpy()
            for image, row in zip(looking, rows, strict=False):
                selected = image.stage == SELECTION
                result = self._look(image, row)
                if selected:  # estimation counts start from zero
                    counts[image.slot] = 0
                if result is None:
                    continue
                active.remove(image)
                free.append(image.slot)
                free.sort()
                yield result

    def _admit(self, item: tuple[int, torch.Tensor, int], slot: int) -> _Image:
        idx, x, label = item
        image = _Image(int(idx), int(label), x.to(self.device, torch.float32), slot,
                       time.perf_counter())
        image.gen = generator(self.seed, image.idx, SELECTION, self.device)
        image.start_chunk(self.n0)
        return image

    def _fill(self, active: list[_Image]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One batch: the next samples of the images in flight, in slot order."""
        space, slots, noisy = self.batch, [], []
        for image in sorted(active, key=lambda im: im.slot):
            if space == 0:
                break
            k = min(space, image.to_forward)
            if k == 0:
                continue
            noise = image.take(k, self.device)
            noisy.append(image.x.unsqueeze(0) + noise * self.plan.sigma)
            slots.append(torch.full((k,), image.slot, dtype=torch.long))
            space -= k
        return torch.cat(slots).to(self.device, non_blocking=True), noisy

    def _look(self, image: _Image, row: np.ndarray) -> PoolResult | None:
        if image.stage == SELECTION:
            # selection samples are never reused: estimation gets a fresh stream and counts
            image.top = int(row.argmax())
            image.stage = ESTIMATION
            image.gen = generator(self.seed, image.idx, ESTIMATION, self.device)
            image.chunks = list(self.plan.looks.chunks)
            image.start_chunk(image.chunks.pop(0))
            return None
        image.look += 1
        image.n_a = int(row[image.top])
        image.lower, stop = self.plan.look(image.look, image.n_a, image.lower)
        if not stop:
            image.start_chunk(image.chunks.pop(0))
            return None
        radius = self.plan.radius(image.lower)
        prediction = image.top if image.lower >= 0.5 else -1
        return PoolResult(image.idx, image.label, prediction, radius, image.n_a,
                          self.plan.looks.counts[image.look], image.lower,
                          time.perf_counter() - image.started)

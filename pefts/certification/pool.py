"""Certify a pool of images at once: each forward pass holds samples of many images.

An adaptive image may need only a few hundred samples, and its early looks come every
few samples, so one image per batch, or a batch that waits at every image's next look,
would leave the device idle. The pool fills each batch in three passes:

1. the samples each image in flight owes up to its next look;
2. the selection samples of newly admitted images, while fewer than ``pool`` are in flight;
3. samples past the next look (up to ``AHEAD`` looks further), when room is left.

Hits are tallied per look chunk on the device, so an image that ran ahead still takes
its looks one at a time, in order: the stopping rule sees exactly the counts it would see
without running ahead. Samples past the look where an image stops are wasted (and
counted as forward passes by the benchmark); AHEAD bounds that waste. Counts are read
back once per batch, and only when some image reaches a look.

Determinism: the noise of image idx comes only from (seed, idx, stream), drawn in the
pieces ``noise.piece_ends`` fixes by the stream's length alone, never by the batch size,
the look schedule or the pool's other images: fixed n = N (one look) and adaptive
n_max = N count the same hits, and so does ``Smooth`` with the same generators.
Batching happens only at the forward pass, so the results do not depend on shards, pool
size, batch size or resuming, up to the last bits a BLAS kernel may change with the
batch's composition.

Sound mode (``sound``, ``pefts.certification.sound``): images are held as integer levels
of the 8-bit grid, the noise is the exactly drawn discretised Gaussian in levels, the
network sees (k + d) / 255, and the certificate is that distribution's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pefts.certification.adaptive import AdaptivePlan
from pefts.certification.guards import (
    nonfinite,
    refuse_batch_dependence,
    refuse_nonfinite,
    refuse_training_mode,
)
from pefts.certification.noise import ESTIMATION, SELECTION, NoiseStream, gaussian, generator
from pefts.certification.sound import DiscreteGaussian

AHEAD = 8  # looks an image may run past its next one: about 2x its samples at most


@dataclass
class PoolResult:
    idx: int
    label: int
    prediction: int  # -1: abstain
    radius: float
    n_a: int
    n_used: int
    p_a_lower: float
    seconds: float  # its share of the wall time of the batches it was in, by samples


@dataclass
class _Image:
    idx: int
    label: int
    x: torch.Tensor
    slot: int
    noise: NoiseStream
    stage: int = SELECTION
    sent: int = 0  # samples of this stage forwarded
    look: int = -1  # the last look taken
    lower: float = 0.0
    top: int = -1
    n_a: int = 0
    seconds: float = 0.0


class Pool:
    """Runs ``plan`` on many images at once with the given model."""

    def __init__(self, model: nn.Module, num_classes: int, plan: AdaptivePlan, n0: int, seed: int,
                 device: torch.device | str, batch: int = 1000, pool: int = 256,
                 sound: bool = False):
        if min(n0, batch, pool) < 1:
            raise ValueError("n0, batch and pool must be at least 1")
        self.model, self.num_classes, self.plan = model, num_classes, plan
        self.sound = DiscreteGaussian(plan.sigma) if sound else None
        self.n0, self.seed, self.batch, self.pool = n0, seed, batch, pool
        self.device = torch.device(device)
        self.counts = plan.looks.counts
        # tally columns: class counts in selection, then hits per look chunk in estimation
        chunk = np.repeat(np.arange(len(self.counts)), plan.looks.chunks)
        self._chunk_column = torch.as_tensor(chunk + num_classes, device=self.device)

    @torch.inference_mode()
    def run(self, images: Iterable[tuple[int, torch.Tensor, int]]) -> Iterator[PoolResult]:
        """Certify (idx, x, label) triples; yields each result as soon as it is final."""
        self._source = iter(images)
        refuse_training_mode(self.model)
        self._probed = False
        self._active: list[_Image] = []
        self._free = list(range(self.pool))
        width = self.num_classes + len(self.counts)
        self._tally = torch.zeros((self.pool, width), dtype=torch.long, device=self.device)
        self._top = torch.zeros(self.pool, dtype=torch.long, device=self.device)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        while True:
            start = time.perf_counter()
            parts = self._fill()
            if not parts:
                return
            yield from self._forward(parts, start)

    def _fill(self) -> list[tuple[_Image, int, int]]:
        """One batch as (image, first sample, samples) parts: owed samples, new images, then running ahead."""
        space, parts = self.batch, []

        def give(image: _Image, target: int) -> None:
            nonlocal space
            k = min(space, target - image.sent)
            if k > 0:
                parts.append((image, image.sent, k))
                image.sent += k
                space -= k

        for image in self._active:
            give(image, self._due(image, 0))
        while space and self._free and (item := next(self._source, None)) is not None:
            image = self._admit(item)
            give(image, self.n0)
        for ahead in range(1, AHEAD + 1):
            for image in self._active:
                if space == 0:
                    return parts
                if image.stage == ESTIMATION:
                    give(image, self._due(image, ahead))
        return parts

    def _due(self, image: _Image, ahead: int) -> int:
        """Sample count of the look ``ahead`` looks past the next one (selection: n0)."""
        if image.stage == SELECTION:
            return self.n0
        return self.counts[min(image.look + 1 + ahead, len(self.counts) - 1)]

    def _forward(self, parts: list[tuple[_Image, int, int]], start: float) -> Iterator[PoolResult]:
        noisy, slots, columns = [], [], []
        for image, first, k in parts:
            # parts of one image come in sample order, so the stream hands out first .. first + k
            noisy.append(self._noisy(image.x, image.noise.take(k)))
            slots.append(torch.full((k,), image.slot, dtype=torch.long))
            if image.stage == ESTIMATION:
                columns.append(self._chunk_column[first:first + k])
            else:
                columns.append(torch.full((k,), -1, dtype=torch.long, device=self.device))
        slot = torch.cat(slots).to(self.device, non_blocking=True)
        column = torch.cat(columns)
        logits = self.model(torch.cat(noisy))
        # gathered on the device and read at the look below: no result is ever given out
        # of batches holding a NaN logit (whose argmax torch reports as a vote)
        self._nonfinite |= nonfinite(logits)
        predictions = logits.argmax(1)
        selecting = column < 0
        # a selection sample counts its class; an estimation sample counts a hit of the top class
        column = torch.where(selecting, predictions, column)
        value = torch.where(selecting, 1, (predictions == self._top[slot]).long())
        self._tally.index_put_((slot, column), value, accumulate=True)
        looking = list({id(im): im for im, _, _ in parts if self._at_look(im)}.values())
        # the one host sync of this batch: the tallies of the images at a look
        rows = self._tally[[im.slot for im in looking]].cpu().numpy() if looking else []
        if looking:
            refuse_nonfinite(self.model, self._nonfinite)
        # Cohen's time column: an image's share of each batch's wall time, so that the
        # times add up to the shard's and compare with fixed-n rows
        elapsed = (time.perf_counter() - start) / sum(k for _, _, k in parts)
        for image, _, k in parts:
            image.seconds += elapsed * k
        for image, row in zip(looking, rows, strict=True):
            result = self._looks(image, row)
            if result is not None:
                self._active.remove(image)
                self._free.append(image.slot)
                self._free.sort()
                yield result

    def _noisy(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.sound is not None:
            return self.sound.noisy(x, noise)
        return x.unsqueeze(0) + noise * self.plan.sigma

    def _at_look(self, image: _Image) -> bool:
        return image.sent >= self._due(image, 0)

    def _admit(self, item: tuple[int, torch.Tensor, int]) -> _Image:
        idx, x, label = item
        x = x.to(self.device, torch.float32)
        if self.sound is not None:  # held as integer levels k: k + d is then exact
            x = self.sound.levels(x, f"image {idx}")
        slot = self._free.pop(0)
        image = _Image(int(idx), int(label), x, slot, self._stream(int(idx), SELECTION, x))
        if not self._probed:
            probe = None
            if self.sound is not None:  # the network only ever sees grid values
                gen = torch.Generator(device=self.device).manual_seed(0)
                probe = self.sound.noisy(x, self.sound.draw(4, x.shape, gen, self.device))
            refuse_batch_dependence(self.model, image.x, self.plan.sigma, probe)
            self._probed = True
        self._tally[slot] = 0
        self._active.append(image)
        return image

    def _stream(self, idx: int, stage: int, x: torch.Tensor) -> NoiseStream:
        total = self.n0 if stage == SELECTION else self.plan.n_max
        draw = self.sound.draw if self.sound is not None else gaussian
        return NoiseStream(generator(self.seed, idx, stage, self.device), x.shape, total,
                           self.device, draw=draw)

    def _looks(self, image: _Image, row: np.ndarray) -> PoolResult | None:
        """Every look the image's forwarded samples complete, in order, until it stops."""
        if image.stage == SELECTION:
            # selection samples are never reused: estimation gets a fresh stream and tally
            image.top = int(row[:self.num_classes].argmax())
            self._top[image.slot] = image.top
            image.stage, image.sent = ESTIMATION, 0
            image.noise = self._stream(image.idx, ESTIMATION, image.x)
            return None
        hits = row[self.num_classes:]
        while image.look + 1 < len(self.counts) and self.counts[image.look + 1] <= image.sent:
            image.look += 1
            image.n_a += int(hits[image.look])
            image.lower, stop = self.plan.look(image.look, image.n_a, image.lower)
            if stop:
                lower, radius = self._certificate(image.lower)
                prediction = image.top if lower >= 0.5 else -1
                return PoolResult(image.idx, image.label, prediction, radius, image.n_a,
                                  self.counts[image.look], lower, image.seconds)
        return None

    def _certificate(self, lower: float) -> tuple[float, float]:
        """The bound on p and the radius it certifies; in sound mode those of the rounded
        Gaussian, which the sampled law approximates to total variation ``tv``."""
        if self.sound is not None:
            lower = self.sound.certified_lower(lower)
            return lower, self.sound.radius(lower)
        return lower, self.plan.radius(lower)

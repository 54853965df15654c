"""BlackVIP black-box prompting (Oh et al., 2023) under randomized smoothing.

The base classifier is reachable only as a probability oracle (``QueryModel``). A
tiny coordinator turns the noisy input into a prompt on the black box's own input
frame, and SPSA-GC trains it from query losses alone: nothing is back-propagated
through the base model. Training runs the decoder in training mode (BatchNorm on batch
statistics, as BlackVIP's trainer); evaluation and certification in eval mode, where the
prompt is a deterministic function of the one noisy input.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pefts.errors import PeftsError
from pefts.hparams import BOOL, Choice, Float, Int, IntList, Text
from pefts.methods.base import Method
from pefts.models.blackbox import SPSA, Coordinator, PromptedClassifier, QueryModel, SPSAConfig
from pefts.models.blackbox.coordinator import Frame
from pefts.models.classifier import PixelClassifier, count_parameters
from pefts.progress import progress
from pefts.training import checkpoints, curves
from pefts.training.loop import TrainConfig, autocast_for, resumable_batches, total_steps
from pefts.training.streams import keyed_seed, noise_like

# what a black-box stage resumes from (checkpoints.Checkpoint.begin_stage checks each)
SPSA_PARTS = {"theta": torch.Tensor, "velocity": torch.Tensor, "k": object, "batchnorm": dict,
              "seen": object, "correct": object, "loss_sum": object, "queries": object,
              "query_calls": object}


def assign(params: list[nn.Parameter], theta: torch.Tensor) -> None:
    """Write the flat vector ``theta`` into ``params`` in place."""
    offset = 0
    with torch.no_grad():
        for p in params:
            p.copy_(theta[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    if offset != theta.numel():
        raise PeftsError(f"parameter vector has {theta.numel()} entries, the coordinator {offset}")


def flatten(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


class BlackBoxPrompt(Method):
    name = "blackbox"
    trains_head = False
    defaults = {
        # the queried black box: the base classifier itself, or zero-shot CLIP (the
        # paper's and BlackVIP's setting) from the local weights file clip_file, which
        # `pefts fetch-weights` writes from open_clip's clip_pretrained tag
        "query": "base", "clip_file": None, "clip_arch": "ViT-B-16", "clip_pretrained": None,
        "prompt_template": "a photo of a {}.",
        # BlackVIP's P_EPS (prompt scale on the normalised frame) and clip_clipping
        "eps": 1.0, "clip": True,
        # coordinator: the decoder starts from a grid x grid map and doubles it once per
        # entry of widths (BlackVIP: grid 7, widths 64/64/32/32/16 -> 224, trigger 800)
        "features": 8, "trigger": 8, "widths": [16, 8], "grid": 2, "seed": 0,
        # the coordinator's frozen encoder: "conv" (random, seeded) or a timm model name,
        # e.g. the paper's vit_base_patch16_224.mae; encoder_file reads its weights locally
        "encoder": "conv", "encoder_file": None, "encoder_pretrained": True,
        # SPSA-GC as BlackVIP's vit_b16.yaml: SPSA_PARAMS [o, c, a, alpha (p), gamma],
        # MOMS, SP_AVG; steps > 0 sets the number of SPSA steps (else the train epochs)
        "a": 0.01, "p": 0.4, "o": 1.0, "c": 0.01, "gamma": 0.1, "momentum": 0.9,
        "perturbations": 5, "steps": 0,
    }
    specs = {
        "query": Choice("base", "clip"), "clip_file": Text(optional=True), "clip_arch": Text(),
        "clip_pretrained": Text(optional=True),
        "prompt_template": Text(),
        "eps": Float(0, low_open=True), "clip": BOOL,
        "features": Int(1), "trigger": Int(1), "widths": IntList(1), "grid": Int(1),
        "seed": Int(0),
        "a": Float(0, low_open=True), "p": Float(0), "o": Float(0), "c": Float(0, low_open=True),
        "gamma": Float(0), "momentum": Float(0, 1, high_open=True), "perturbations": Int(1),
        "steps": Int(0),
        "encoder": Text(), "encoder_file": Text(optional=True), "encoder_pretrained": BOOL,
    }

    def spsa_config(self) -> SPSAConfig:
        h = self.hparams
        return SPSAConfig(a=float(h["a"]), p=float(h["p"]), o=float(h["o"]), c=float(h["c"]),
                          gamma=float(h["gamma"]), momentum=float(h["momentum"]),
                          perturbations=int(h["perturbations"]))

    def build(self, base: PixelClassifier) -> nn.Module:
        h = self.hparams
        queried: nn.Module = base
        # the prompt is written on the black box's own input: size and normalisation
        frame = Frame((base.spec.input_size,) * 2, tuple(base.spec.mean), tuple(base.spec.std))
        if h["query"] == "clip":
            queried = self.zero_shot_clip()
            frame = Frame(queried.input_size, tuple(queried.mean.flatten().tolist()),
                          tuple(queried.std.flatten().tolist()))
        coordinator = Coordinator(frame.mean.shape[1], int(h["features"]), int(h["trigger"]),
                                  list(h["widths"]), int(h["grid"]), int(h["seed"]),
                                  str(h["encoder"]), h["encoder_file"], bool(h["encoder_pretrained"]))
        model = PromptedClassifier(coordinator, QueryModel(queried), frame, float(h["eps"]),
                                   bool(h["clip"]))
        # the query model hides its network; its size is known here, for the parameter table
        model.queried_parameters = getattr(queried, "total_parameters", 0)
        return model

    def zero_shot_clip(self) -> nn.Module:
        from pefts.models.blackbox.clip import load_clip

        h = self.hparams
        if "{}" not in str(h["prompt_template"]):
            raise PeftsError(f"blackbox prompt_template must contain {{}} for the class name, "
                             f"got {h['prompt_template']!r}")
        if not self.class_names:
            raise PeftsError("the CLIP black box needs the task's class names (none were given)")
        if not h["clip_file"]:
            raise PeftsError("the CLIP black box (blackbox query: clip) needs clip_file, a local "
                             "weights file, or clip_pretrained, an open_clip tag that "
                             "`pefts fetch-weights` fetches")
        return load_clip(h["clip_file"], self.class_names, str(h["clip_arch"]),
                         str(h["prompt_template"]), h["clip_pretrained"])

    def keeps_base_head(self) -> bool:
        # zero-shot CLIP reads the task's class names: it serves any classes
        return self.hparams["query"] == "base"

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        # named from the enclosing model, so the base class's load_trainable finds them;
        # the decoder's BatchNorm statistics too: evaluation and certification read them
        learnable = {id(p) for p in model.coordinator.learnable()}
        state = {f"coordinator.{name}": p.detach()
                 for name, p in model.coordinator.named_parameters() if id(p) in learnable}
        return state | {f"coordinator.{name}": b for name, b in model.coordinator.statistics().items()}

    def frozen_parts(self, model: nn.Module) -> dict[str, int]:
        parts = {"coordinator encoder": count_parameters(model.coordinator.encoder)}
        if self.hparams["query"] == "clip":
            parts["queried CLIP"] = int(model.queried_parameters)
        return parts

    def training_steps(self, data: Dataset, cfg: TrainConfig) -> int:
        """SPSA steps: the ``steps`` hyper-parameter (BlackVIP's budget is counted in
        steps), else the train epochs' steps."""
        return int(self.hparams["steps"]) or total_steps(data, cfg, cfg.epochs)

    def fit(self, model: nn.Module, data: Dataset, sigma: float, cfg: TrainConfig,
            device: torch.device | str) -> dict[str, Any]:
        model.to(device).eval()
        coordinator = model.coordinator
        params = coordinator.learnable()
        statistics = coordinator.statistics()
        query: QueryModel = model.query
        # on the CPU, reseeded at every step by (seed, step): the same perturbations on
        # any device and after any restart (pefts.training.streams)
        perturb_gen = torch.Generator()
        optimiser = SPSA(flatten(params), self.spsa_config(), perturb_gen)
        total = self.training_steps(data, cfg)
        autocast = autocast_for(cfg, device)
        checkpoint = checkpoints.active()
        _, saved = checkpoint.begin_stage(SPSA_PARTS) if checkpoint else (None, None)
        seen, correct, loss_sum, queries, calls = 0, 0.0, 0.0, 0, 0
        if saved is not None:  # SPSA's whole state, the statistics and the query counts
            # the checkpoint loads on the CPU; SPSA draws its perturbations where theta lives
            at_device = optimiser.theta.device
            optimiser.theta = saved["theta"].to(at_device)
            optimiser.velocity = saved["velocity"].to(at_device)
            optimiser.k = saved["k"]
            with torch.no_grad():
                for name, value in saved["batchnorm"].items():
                    statistics[name].copy_(value)
            seen, correct, loss_sum = saved["seen"], saved["correct"], saved["loss_sum"]
            queries, calls = saved["queries"], saved["query_calls"]
        start_images, start_calls = query.images - queries, query.calls - calls
        bar = progress(total=total, initial=saved["step"] if saved else 0,
                       desc=f"{self.name} sigma={sigma}", unit="step", leave=False)
        # BlackVIP's trainer: the decoder in training mode (BatchNorm on the batch's
        # statistics, running statistics updated by every perturbed query)
        coordinator.train()
        curve = curves.active()
        if curve is not None:
            curve.begin_stage()
        clock, per_epoch = curves.EpochClock(), math.ceil(len(data) / cfg.batch_size)
        for x, y, at in resumable_batches(data, cfg, total, saved):
            if at.batch == 1:
                seen, correct, loss_sum = 0, 0.0, 0.0  # the last epoch's statistics only
            x, y = x.to(device), y.to(device)
            perturb_gen.manual_seed(keyed_seed(cfg.seed, "spsa", at.step))
            noisy = x + noise_like(x) * sigma  # one draw for all of the step's queries
            hits = []
            with torch.no_grad(), autocast:
                # the frame and the frozen encoder's features are the same for every query
                prepared = model.prepare(noisy)

            def loss(theta: torch.Tensor, prepared=prepared, y=y, hits=hits) -> float:
                assign(params, theta)
                with autocast:
                    log_probs = model.answer(*prepared)
                hits.append(int((log_probs.argmax(1) == y).sum()))
                return float(F.nll_loss(log_probs.float(), y))

            with torch.no_grad():
                loss_sum += optimiser.step(loss) * len(y)
            seen += len(y)
            clock.count(len(y))
            correct += sum(hits) / len(hits)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                            queries=query.images - start_images, refresh=False)
            if curve is not None and (at.epoch_end or at.run_end):
                # lr: the step size a_k of the step just taken
                curve.add(at.step / per_epoch, at.step,
                          {"train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                           "queries": query.images - start_images},
                          optimiser.config.step_size(optimiser.k), clock.rate())
                clock.restart()
            if at.save_due(checkpoint):
                checkpoint.save({
                    "theta": optimiser.theta, "velocity": optimiser.velocity, "k": optimiser.k,
                    "batchnorm": {name: b.detach().clone() for name, b in statistics.items()},
                    "seen": seen, "correct": correct,
                    "loss_sum": loss_sum, "queries": query.images - start_images,
                    "query_calls": query.calls - start_calls, **at.state()})
        bar.close()
        coordinator.eval()
        assign(params, optimiser.theta)
        return {
            "train_loss": loss_sum / max(1, seen),  # over the last epoch's perturbed queries
            "train_accuracy": correct / max(1, seen),
            "spsa_steps": optimiser.k,
            "queries": query.images - start_images,
            "query_calls": query.calls - start_calls,
            "trainable_parameters": int(optimiser.theta.numel()),
        }

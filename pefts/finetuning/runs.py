"""Train the base classifier and fine-tune one (method, sigma): the work behind the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pefts.data import class_names, load_split, read_manifest
from pefts.errors import PeftsError
from pefts.methods import build_model, get_method
from pefts.models.classifier import (
    BaseSpec,
    PixelClassifier,
    build_classifier,
    check_input,
    count_parameters,
    load_base,
    replace_head,
)
from pefts.runtime.artifacts import load_meta, save_artifact
from pefts.runtime.verified import fetch_record, recorded_weights, sha256
from pefts.training import curves
from pefts.training.checkpoints import checkpointing, discard, fingerprint
from pefts.training.loop import (
    CONDUCT_OPTIONS,
    TrainConfig,
    noisy_accuracy,
    split_validation,
    train_noisy,
)


def eval_subset(data: torch.utils.data.Dataset, limit: int) -> torch.utils.data.Dataset:
    """At most ``limit`` evenly spaced images: folder datasets are sorted by class, so
    the first ``limit`` would cover only the first few classes."""
    if 0 < limit < len(data):
        step = len(data) / limit
        return torch.utils.data.Subset(data, [int(i * step) for i in range(limit)])
    return data


def held_out_accuracy(model: torch.nn.Module, val: torch.utils.data.Dataset, sigma: float,
                      device: torch.device, eval_max: int) -> float | None:
    """Accuracy on the validation split (None without one): the number to tune on."""
    if len(val) == 0:
        return None
    return noisy_accuracy(model, eval_subset(val, eval_max), sigma, device=device)


def train_base(manifest_path: str | Path, out: str | Path, spec: dict[str, Any],
               train: dict[str, Any], pretrained: bool, pretrained_file: str | None,
               device: torch.device, eval_max: int = 2000) -> dict[str, Any]:
    """Train (or, with 0 epochs, just wrap) the base classifier on clean images."""
    manifest = read_manifest(manifest_path)
    cfg = TrainConfig.from_dict(train)
    torch.manual_seed(cfg.seed)
    model = build_classifier(BaseSpec(num_classes=manifest["num_classes"], **spec),
                             pretrained, pretrained_file)
    check_input(model)
    origin = pretrained_file or (spec["arch"] if pretrained else None)
    start = {"spec": spec, "pretrained": origin,
             "pretrained_sha256": sha256(pretrained_file) if pretrained_file else None}
    return fit_clean_and_save(model, manifest, cfg, out, device, eval_max,
                              {"pretrained": origin, **pretrained_provenance(pretrained_file)},
                              start)


def pretrained_provenance(pretrained_file: str | None) -> dict[str, Any]:
    """sha256 of the external weights the base started from, and the hub name they were
    fetched under when `pefts fetch-weights` wrote them."""
    if not pretrained_file:
        return {}
    fetched = fetch_record(pretrained_file)
    return {"pretrained_sha256": sha256(pretrained_file),
            "pretrained_source": ({"kind": fetched["kind"], "name": fetched["name"]}
                                  if fetched else None)}


def adapt_base(manifest_path: str | Path, source: str | Path, out: str | Path,
               train: dict[str, Any], device: torch.device, eval_max: int = 2000
               ) -> dict[str, Any]:
    """Round one of two-round adaptation: fine-tune every parameter of a base classifier
    trained on another task on the clean downstream data, with a fresh head."""
    manifest = read_manifest(manifest_path)
    cfg = TrainConfig.from_dict(train)
    torch.manual_seed(cfg.seed)
    model = load_base(source)
    # always a fresh head: with as many classes, the source head would still map the
    # downstream classes onto the source ones
    replace_head(model, manifest["num_classes"])
    return fit_clean_and_save(model, manifest, cfg, out, device, eval_max,
                              {"pretrained": None, "adapted_from": str(source)},
                              {"source_sha256": sha256(source)})


def run_fingerprint(manifest: dict[str, Any], cfg: TrainConfig, **start: Any) -> str:
    """What decides a run's final weights: the data (the manifest's sha256, as read),
    where training starts (base, method, hyper-parameters, sigma) and the training options
    that change the result."""
    train = {k: v for k, v in vars(cfg).items() if k not in CONDUCT_OPTIONS}
    return fingerprint(data=manifest["_sha256"], train=train, **start)


def training_curve(out: str | Path, checkpoint: Any, model: torch.nn.Module,
                   val: torch.utils.data.Dataset, sigma: float, device: torch.device,
                   eval_max: int) -> Any:
    """The run's curve beside its weights (pefts.training.curves), each epoch's validation accuracy
    measured as the run's final one is (at most ``eval_max`` held-out images); kept
    across a resume of its checkpoint."""
    evaluate = (curves.evaluating(model, lambda: held_out_accuracy(model, val, sigma, device,
                                                                    eval_max))
                if len(val) else None)
    return curves.recording(out, fresh=checkpoint.saved is None, evaluate=evaluate)


def fit_clean_and_save(model: PixelClassifier, manifest: dict[str, Any], cfg: TrainConfig, out: str | Path,
                       device: torch.device, eval_max: int, extra: dict[str, Any],
                       start: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    train, val = split_validation(load_split(manifest, "train"), cfg)
    if cfg.epochs > 0:
        with checkpointing(out, run_fingerprint(manifest, cfg, **start),
                           cfg.checkpoint_minutes) as checkpoint, \
                training_curve(out, checkpoint, model, val, 0.0, device, eval_max):
            metrics = train_noisy(model, train, 0.0, cfg, device, desc="base")
    metrics["clean_val_accuracy"] = held_out_accuracy(model, val, 0.0, device, eval_max)
    test = eval_subset(load_split(manifest, "test"), eval_max)
    metrics["clean_test_accuracy"] = noisy_accuracy(model, test, 0.0, device=device)
    meta = {
        "kind": "base", "spec": model.spec.to_dict(), "dataset": manifest["dataset"],
        "classes": manifest["classes"], "train": vars(cfg), "metrics": metrics,
        "total_params": count_parameters(model), **extra,
    }
    save_artifact(out, model.state_dict(), meta)
    discard(out)
    return meta


def finetune(manifest_path: str | Path, base_weights: str | Path, out: str | Path,
             method_name: str, sigma: float, hparams: dict[str, Any], train: dict[str, Any],
             device: torch.device, eval_max: int = 2000) -> dict[str, Any]:
    """PEFTSmoothing for one (method, sigma); saves only the trained parameters."""
    if sigma <= 0:
        raise PeftsError(f"sigma must be positive, got {sigma}")
    manifest = read_manifest(manifest_path)
    method = get_method(method_name, **hparams)
    # every external weight the method reads (coordinator encoder, CLIP, diffusion UNet),
    # verified before any work and recorded, so certify can refuse a file changed since
    external = recorded_weights(method.hparams)
    cfg = TrainConfig.from_dict(train)
    base = load_base(base_weights)
    base_sha256 = sha256(base_weights)
    base_params = count_parameters(base)
    torch.manual_seed(cfg.seed)  # also seeds a fresh head
    model = build_model(method, base, manifest["classes"], load_meta(base_weights)["classes"],
                        class_names(manifest))
    model = model.to(device)
    metrics: dict[str, Any] = {}
    train, val = split_validation(load_split(manifest, "train"), cfg)
    if method.trains:
        run = run_fingerprint(manifest, cfg, base=base_sha256,
                              method=method_name, hparams=method.hparams, sigma=sigma)
        with checkpointing(out, run, cfg.checkpoint_minutes) as checkpoint, \
                training_curve(out, checkpoint, model, val, sigma, device, eval_max):
            metrics = method.fit(model, train, sigma, cfg, device)
    metrics["noisy_val_accuracy"] = held_out_accuracy(model, val, sigma, device, eval_max)
    test = eval_subset(load_split(manifest, "test"), eval_max)
    metrics["noisy_test_accuracy"] = noisy_accuracy(model, test, sigma, device=device)
    meta = {
        "kind": "finetuned", "method": method_name, "hparams": method.hparams, "sigma": sigma,
        "train": vars(cfg) if method.trains else None, "dataset": manifest["dataset"],
        "classes": manifest["classes"], "class_names": class_names(manifest),
        "num_classes": manifest["num_classes"],
        "base": str(base_weights), "base_sha256": base_sha256, "metrics": metrics,
        "external_sha256": external,
        "trainable_params": count_parameters(model, trainable_only=True),
        "frozen_added_params": method.frozen_parameters(model),
        "frozen_parts": method.frozen_parts(model),
        "total_params": count_parameters(model),
        "base_params": base_params,
    }
    save_artifact(out, method.trainable_state(model), meta)
    discard(out)
    return meta

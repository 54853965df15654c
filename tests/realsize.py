"""Fixtures of the real-size tests, reusable for any preset: a random-weight ViT-B/16
weights file, small generated image folders (ImageFolder and CIFAR-10 layouts), and the
overlay config that shrinks a preset's work (epochs, n, images, grids) and nothing else.

A method that needs more than the overlay gives it (another network's weights, say)
adds its fixture here; the tests take the method list from the preset itself."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# timm's vit_base_patch16_224 without its head: the paper's 86M network
VITB16_BODY_PARAMS = 85_798_656
# the coordinator's MAE ViT-B/16 as BlackVIP reads it: the same body without the final
# norm, which the CLS of the last hidden state never passes through
MAE_ENCODER_PARAMS = VITB16_BODY_PARAMS - 2 * 768
# open_clip's ViT-B-16 (image and text towers): the black box the presets query
CLIP_VITB16_PARAMS = 149_620_737
TESTSITE = Path(__file__).resolve().parent / "testsite"
BATCH = 2  # images per training step and per certification batch
# one noisy sample selects, six estimate: half the forwards of n0 = 2, n = 12, and a
# certificate still possible (see overlay)
CERTIFY_N0, CERTIFY_N, CERTIFY_ALPHA = 1, 6, 0.05


def certified_images(gpu: bool) -> int:
    """Images certified per run: two on a GPU; one on a CPU, where the ImageNet diffusion
    row at its real size costs minutes a sample (a 553M UNet and BEiT-L/16 at 512)."""
    return 2 if gpu else 1


def vitb16_weights(path: Path) -> Path:
    """A real-size ViT-B/16 with random weights (no download), as safetensors."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("vit_base_patch16_224", pretrained=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def _image(rng: np.random.Generator, label: int, size: tuple[int, int]) -> Image.Image:
    """A noisy image whose mean colour depends on the label, so classes differ a little."""
    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32)
    pixels = base + rng.normal(0, 40, (size[1], size[0], 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def image_folder(root: Path, num_classes: int, train_per_class: int, test_classes: list[int],
                 test_name: str = "val", sizes: tuple[tuple[int, int], ...] = ((48, 40), (40, 56))
                 ) -> Path:
    """root/train/<class>/*.png for every class and root/<test_name>/<class>/*.png, one
    image for each class of ``test_classes``, of mixed sizes (the loader resizes)."""
    rng = np.random.default_rng(0)
    names = [f"n{c:08d}" for c in range(num_classes)]  # ImageNet-like wnids, sorted = label
    for split, per_class in (("train", {c: train_per_class for c in range(num_classes)}),
                             (test_name, {c: 1 for c in test_classes})):
        for c, count in per_class.items():
            folder = root / split / names[c]
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _image(rng, c, sizes[(c + i) % len(sizes)]).save(folder / f"{i}.png")
    return root


def cifar10_folder(root: Path, train_per_class: int, test_classes: list[int]) -> Path:
    """CIFAR-10 in torchvision's pickled layout (root/cifar-10-batches-py); returns the
    JSON of the files' checksums for ``use_fixture_checksums``."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(labels: list[int]) -> dict[str, Any]:
        images = [np.asarray(_image(rng, y, (32, 32))).transpose(2, 0, 1).reshape(-1) for y in labels]
        return {"data": np.stack(images).astype(np.uint8), "labels": labels}

    train = [c for c in range(10) for _ in range(train_per_class)]
    files = {f"data_batch_{i + 1}": batch(train[i::5]) for i in range(5)}
    files["test_batch"] = batch(list(test_classes))
    files["batches.meta"] = {"label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                             "dog", "frog", "horse", "ship", "truck"]}
    md5 = {}
    for name, content in files.items():
        data = pickle.dumps(content)
        (folder / name).write_bytes(data)
        md5[name] = hashlib.md5(data).hexdigest()
    checksums = root / "fixture-md5.json"
    checksums.write_text(json.dumps(md5))
    return checksums


def use_fixture_checksums(md5: dict[str, str]) -> None:
    """Make torchvision check CIFAR-10 files against the fixture's own checksums."""
    from torchvision.datasets import CIFAR10

    CIFAR10.train_list = [[name, md5[name]] for name, _ in CIFAR10.train_list]
    CIFAR10.test_list = [[name, md5[name]] for name, _ in CIFAR10.test_list]
    CIFAR10.meta = {**CIFAR10.meta, "md5": md5[CIFAR10.meta["filename"]]}


def fixture_env(checksums: Path | None) -> dict[str, str]:
    """Environment of the child processes: the test-only checksum patch, when needed."""
    if checksums is None:
        return {}
    # the worktree too, so that the patch (and the pefts of this checkout) import
    path = [str(TESTSITE), str(TESTSITE.parents[1]), os.environ.get("PYTHONPATH", "")]
    return {"PEFTS_TEST_CIFAR10_MD5": str(checksums), "PYTHONPATH": os.pathsep.join(filter(None, path))}


def shrink_train(train: dict[str, Any], num_train: int, gpu: bool = False) -> dict[str, Any]:
    """One optimiser step of ``BATCH`` images (no step at all where the preset has none),
    on a CPU in fp32 (see ``overlay``)."""
    epochs = 0 if train.get("epochs", 1) == 0 else BATCH / num_train
    return {"epochs": epochs, "batch_size": BATCH, "num_workers": 0,
            **({} if gpu else {"precision": "fp32"})}


def overlay(preset: dict[str, Any], *, weights: Path, root: Path, results: Path,
            num_train: int, gpu: bool = False) -> dict[str, Any]:
    """A second config over ``preset`` that shrinks its work, never its methods: every
    method of the preset still runs, on ``num_train`` images, one sigma, two values per
    ablation, a few certified images at a small n."""
    exp = preset["experiments"]
    sigma = preset["sigmas"][0]
    methods = {*preset["methods"], *exp["noise_learning"]["methods"], *exp["twobirds"]["methods"]}
    method_params = {}
    for method in sorted(methods):
        params = preset.get("method_params", {}).get(method, {})
        train = shrink_train(params.get("train", {}), num_train, gpu)
        # a second training phase counted in epochs (the denoiser's stability phase)
        extra = {k: train["epochs"] for k, v in params.get("hparams", {}).items()
                 if k.endswith("_epochs") and v}
        # a budget counted in steps (the black box's SPSA steps): one step
        extra |= {k: 1 for k, v in params.get("hparams", {}).items() if k == "steps" and v}
        method_params[method] = {"train": train, **({"hparams": extra} if extra else {})}
    return {
        "results": str(results),
        "device": "auto" if gpu else "cpu",
        # one CPU per job: on a 2-core machine two jobs overlap their start-up and I/O
        **({} if gpu else {"threads": 1}),
        "gpus_per_job": preset["gpus_per_job"] if gpu else 0,
        "dataset": {"root": str(root), "download": False},
        "base": {"pretrained_file": str(weights),
                 "train": shrink_train(preset["base"]["train"], num_train, gpu)},
        "sigmas": [sigma],
        "method_params": method_params,
        # n and alpha that CAN certify (the all-hit bound 0.05 ** (1/6) = 0.61 > 1/2): a
        # random ViT-B/16 predicts one class under most noise, so some image certifies
        # (at n = 12, 7 of the ImageNet preset's 16 runs had all 12 hits).
        # One look at n (fixed n), so each row's bound is Cohen's CP bound of its counts;
        # the preset's merged LoRA stays, and fixed n runs through the same pool as
        # adaptive certification (test_adaptive covers its looks). On a CPU in fp32 and
        # eager: a CPU without bf16 matrix units runs bf16 convolutions on a reference
        # path, 24.7 min an image for the ImageNet DnCNN at 224 px against seconds in
        # fp32, and compiling ViT-B/16 on 2 cores takes minutes; the preset's bf16 and
        # compile are checked against eager fp32 per method in tests/test_fastpath.py, and
        # on a GPU (PEFTS_REALSIZE_GPU=1) this test keeps both
        "certify": {"n0": CERTIFY_N0, "n": CERTIFY_N, "alpha": CERTIFY_ALPHA, "batch": 4, "skip": 1,
                    "max": certified_images(gpu), "shards": 1, "adaptive": False,
                    **({} if gpu else {"precision": "fp32", "compile": False})},
        "experiments": {
            "twobirds": {"sigmas": [sigma],
                         "adapt_train": shrink_train(exp["twobirds"]["adapt_train"], num_train, gpu),
                         "source_train": shrink_train(exp["twobirds"].get("source_train")
                                                      or preset["base"]["train"], num_train, gpu),
                         "certify": {"skip": 1, "max": certified_images(gpu), "shards": 1}},
            "ablation": {"sigma": sigma, "prompt_length": exp["ablation"]["prompt_length"][:2],
                         "lora_rank": exp["ablation"]["lora_rank"][:2]},
            "noise_learning": {"sigmas": [sigma]},
        },
    }

"""Data loaders on local fixtures and the offline pretrained-weights path."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torchvision import datasets

from pefts.data import load_split, prepare, read_manifest
from pefts.errors import PeftsError
from pefts.finetuning.runs import train_base
from pefts.models.classifier import BaseSpec, build_classifier, load_base

from .conftest import TINY_SPEC


def test_digits_split_is_seeded_recorded_and_in_unit_range(digits, tmp_path):
    manifest = read_manifest(digits)
    test = load_split(manifest, "test")
    x, y = test[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert manifest["num_train"] + manifest["num_test"] == 1797
    again = prepare("digits", tmp_path, seed=0)
    assert again["num_test"] == manifest["num_test"]
    assert torch.equal(load_split(tmp_path / "manifest.json", "test")[5][0], test[5][0])
    prepare("digits", tmp_path / "other", seed=1)
    index = [load_file(str(d / "digits.safetensors"))["test_index"] for d in (tmp_path, tmp_path / "other")]
    assert not torch.equal(*index)  # the seed, recorded in the manifest, picks the split


def write_cifar10(root, monkeypatch, per_batch: int = 4) -> None:
    """A tiny CIFAR-10 in its own on-disk format (pickled batches of uint8 rows)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist(), "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))

    def md5(name):
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    # torchvision checks the real archive's checksums; the fixture has its own
    monkeypatch.setattr(datasets.CIFAR10, "train_list", [[n, md5(n)] for n in names[:5]])
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(datasets.CIFAR10, "meta", {"filename": "batches.meta",
                                                   "key": "label_names", "md5": md5("batches.meta")})


def test_cifar10_loader_reads_the_on_disk_format(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "cifar", monkeypatch)
    manifest = prepare("cifar10", tmp_path / "prepared", root=str(tmp_path / "cifar"))
    assert manifest["num_train"] == 20 and manifest["num_test"] == 4
    assert manifest["classes"][0] == "airplane"
    x, y = load_split(tmp_path / "prepared" / "manifest.json", "test")[0]
    assert x.shape == (3, 32, 32) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert 0 <= y < 10


def test_cifar10_augment_changes_the_train_split_only(tmp_path, monkeypatch):
    """augment: random crops of the 4-pixel padded image and flips, on training images
    only; the test split (what is certified) is the plain image every time."""
    write_cifar10(tmp_path / "cifar", monkeypatch)
    root = str(tmp_path / "cifar")
    plain = prepare("cifar10", tmp_path / "plain", root=root)
    augmented = prepare("cifar10", tmp_path / "aug", root=root, images={"augment": True})
    assert augmented["images"] == {"augment": True}
    torch.manual_seed(0)
    for split in ("train", "test"):
        reference = load_split(plain, split)
        data = load_split({**augmented, "_dir": str(tmp_path / "aug")}, split)
        originals = [reference[i][0] for i in range(4)]
        draws = [[data[i][0] for i in range(4)] for _ in range(8)]
        changed = sum(not torch.equal(x, originals[i]) for draw in draws for i, x in enumerate(draw))
        if split == "test":
            assert changed == 0
            continue
        assert changed > 16  # most draws crop or flip
        for draw in draws:  # each is a shifted (and maybe flipped) window of the padded image
            for i, x in enumerate(draw):
                padded = torch.nn.functional.pad(originals[i], (4, 4, 4, 4))
                windows = [padded[:, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
                assert any(torch.equal(x, w) or torch.equal(x, w.flip(-1)) for w in windows)
    with pytest.raises(PeftsError, match="augment"):
        prepare("cifar10", tmp_path / "bad", root=root, images={"crop": 24})


def test_cifar10_without_data_names_the_config_key(tmp_path):
    with pytest.raises(PeftsError, match="dataset.root"):
        prepare("cifar10", tmp_path / "prepared", root=str(tmp_path / "empty"))


def test_imagenet_folder_layout(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (tmp_path / "imnet" / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((300, 260, 3), 128, np.uint8)).save(
                tmp_path / "imnet" / split / cls / "a.JPEG")
    manifest = prepare("imagenet", tmp_path / "prepared", root=str(tmp_path / "imnet"))
    assert manifest["num_classes"] == 2 and manifest["num_test"] == 2
    x, _ = load_split(tmp_path / "prepared" / "manifest.json", "test")[0]
    assert x.shape == (3, 224, 224)
    with pytest.raises(PeftsError, match="dataset.root"):
        prepare("imagenet", tmp_path / "p2", root=str(tmp_path / "nowhere"))


def test_input_layer_resizes_inside_the_model():
    spec = BaseSpec(**{**TINY_SPEC, "num_classes": 10, "input_size": 16,
                       "model_kwargs": {**TINY_SPEC["model_kwargs"], "img_size": 16}})
    model = build_classifier(spec).eval()
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 10)  # 8x8 pixels, 16x16 network


def test_pretrained_weights_from_a_local_file(digits, tmp_path):
    """The presets' offline path: timm weights from a local file, head replaced."""
    source = timm.create_model(TINY_SPEC["arch"], num_classes=1000, **TINY_SPEC["model_kwargs"])
    weights = tmp_path / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    out = tmp_path / "base.safetensors"
    train_base(digits, out, TINY_SPEC, {"epochs": 0}, pretrained=False,
               pretrained_file=str(weights), device="cpu")
    loaded = load_base(out)
    block = "blocks.0.attn.qkv.weight"
    assert torch.equal(loaded.net.state_dict()[block], source.state_dict()[block])
    assert loaded.net.get_classifier().out_features == 10
    assert json.loads(out.with_suffix(".json").read_text())["pretrained"] == str(weights)


def test_missing_pretrained_file_is_refused(digits, tmp_path):
    with pytest.raises(PeftsError, match="pretrained_file"):
        train_base(digits, tmp_path / "b.safetensors", TINY_SPEC, {"epochs": 0}, False,
                   str(tmp_path / "nope.pth"), "cpu")


def test_class_subset_of_any_dataset_is_relabelled(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "cifar", monkeypatch, per_batch=20)
    full = load_split(prepare("cifar10", tmp_path / "full", root=str(tmp_path / "cifar")), "test")
    manifest = prepare("cifar10", tmp_path / "sub", root=str(tmp_path / "cifar"), classes=[7, 2])
    assert manifest["classes"] == ["horse", "bird"] and manifest["num_classes"] == 2
    sub = load_split(tmp_path / "sub" / "manifest.json", "test")
    originals = [int(full[i][1]) for i in range(len(full)) if int(full[i][1]) in (7, 2)]
    assert len(sub) == manifest["num_test"] == len(originals)
    assert [int(sub[i][1]) for i in range(len(sub))] == [0 if y == 7 else 1 for y in originals]
    with pytest.raises(PeftsError, match="distinct labels"):
        prepare("cifar10", tmp_path / "bad", root=str(tmp_path / "cifar"), classes=[3, 10])

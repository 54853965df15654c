"""Your own images: the image-folder dataset (any size, resize/crop from the config),
ImageNet as a case of it, the README's example config, and the CIFAR-10 fixture whose
checksums torchvision still verifies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pefts.data import load_split, prepare
from pefts.errors import PeftsError
from tests import realsize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path) -> Path:
    # 3 classes, 2 training images each, test images of classes 0 and 2 only, mixed sizes
    return realsize.image_folder(tmp_path / "images", 3, 2, [0, 2], test_name="test")


def test_images_of_any_size_are_resized_and_cropped(folder, tmp_path):
    manifest = prepare("imagefolder", tmp_path / "prepared", root=str(folder),
                       images={"resize": 40, "crop": 32})
    assert manifest["image_shape"] == [3, 32, 32] and manifest["num_classes"] == 3
    assert (manifest["num_train"], manifest["num_test"]) == (6, 2)
    test = load_split(tmp_path / "prepared" / "manifest.json", "test")
    images, labels = zip(*[test[i] for i in range(len(test))], strict=True)
    # labels follow the train folder's classes although the test folder lacks class 1
    assert list(labels) == [0, 2]
    assert all(x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1 for x in images)


def test_a_height_width_resize_needs_no_crop_and_augment_crops_randomly(folder, tmp_path):
    prepare("imagefolder", tmp_path / "p", root=str(folder),
            images={"resize": [24, 20], "augment": False})
    x, _ = load_split(tmp_path / "p" / "manifest.json", "train")[0]
    assert x.shape == (3, 24, 20)
    prepare("imagefolder", tmp_path / "a", root=str(folder), images={"crop": 16, "augment": True})
    train = load_split(tmp_path / "a" / "manifest.json", "train")
    torch.manual_seed(0)
    first, second = train[0][0], train[0][0]
    assert first.shape == (3, 16, 16) and not torch.equal(first, second)


def test_a_class_subset_of_a_folder_keeps_its_images(tmp_path):
    """Two birds on a folder: the downstream task's classes 3 and 1, relabelled 0 and 1."""
    root = realsize.image_folder(tmp_path / "imgs", 4, 2, [1, 3], test_name="test")
    manifest = prepare("imagefolder", tmp_path / "p", classes=[3, 1], root=str(root),
                       images={"crop": 8})
    assert manifest["classes"] == ["n00000003", "n00000001"]
    assert (manifest["num_train"], manifest["num_test"]) == (4, 2)
    train = load_split(tmp_path / "p" / "manifest.json", "train")
    assert sorted(train[i][1] for i in range(len(train))) == [0, 0, 1, 1]


def test_val_folder_is_the_test_split_when_there_is_no_test(tmp_path):
    root = realsize.image_folder(tmp_path / "imgs", 2, 1, [1], test_name="val")
    manifest = prepare("imagefolder", tmp_path / "p", root=str(root), images={"crop": 8})
    assert manifest["num_test"] == 1


@pytest.mark.parametrize("images, needle", [
    (None, "differ in size"),
    ({"size": 3}, "unknown image option"),
])
def test_bad_image_folders_are_refused(folder, tmp_path, images, needle):
    with pytest.raises(PeftsError, match=needle):
        prepare("imagefolder", tmp_path / "p", root=str(folder), images=images)


def test_missing_folder_names_the_config_key(tmp_path):
    with pytest.raises(PeftsError, match="set dataset.root"):
        prepare("imagefolder", tmp_path / "p", root=str(tmp_path / "nothing"))


def test_imagenet_is_an_image_folder_cropped_to_224(tmp_path):
    root = realsize.image_folder(tmp_path / "imagenet", 2, 1, [0, 1])
    manifest = prepare("imagenet", tmp_path / "p", root=str(root))
    assert manifest["images"] == {"resize": 256, "crop": 224, "augment": True}
    x, _ = load_split(tmp_path / "p" / "manifest.json", "test")[0]
    assert x.shape == (3, 224, 224)


@pytest.mark.slow
def test_the_readme_example_config_prepares_a_folder(folder, tmp_path):
    """The README's own-images command, run as written up to the prepared data."""
    example = yaml.safe_load((ROOT / "configs" / "imagefolder-example.yaml").read_text())
    assert example["dataset"]["name"] == "imagefolder"
    results = tmp_path / "results"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile",
         "configs/imagefolder-example.yaml", "--config", f"dataset={{'root': '{folder}'}}",
         f"results={results}", "--nolock", str(results / "data" / "manifest.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((results / "data" / "manifest.json").read_text())
    crop = example["dataset"]["crop"]
    assert manifest["image_shape"] == [3, crop, crop] and manifest["num_classes"] == 3


def test_cifar10_fixture_passes_torchvision_checks_only_with_its_own_checksums(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    checksums = realsize.cifar10_folder(tmp_path, 1, [0, 5])
    with pytest.raises(PeftsError, match="CIFAR-10 not found"):  # the published checksums
        prepare("cifar10", tmp_path / "p", root=str(tmp_path))
    for key in ("train_list", "test_list", "meta"):
        monkeypatch.setattr(CIFAR10, key, getattr(CIFAR10, key))  # undone after the test
    realsize.use_fixture_checksums(json.loads(checksums.read_text()))
    manifest = prepare("cifar10", tmp_path / "p", root=str(tmp_path))
    assert (manifest["num_train"], manifest["num_test"]) == (10, 2)
    x, y = load_split(tmp_path / "p" / "manifest.json", "test")[1]
    assert x.shape == (3, 32, 32) and y == 5
    # a corrupted fixture file still fails the (fixture's) checksum
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-1] + b"\0")
    with pytest.raises(PeftsError, match="CIFAR-10 not found"):
        prepare("cifar10", tmp_path / "q", root=str(tmp_path))


@pytest.mark.slow
def test_child_processes_get_the_checksum_patch_only_from_the_fixture_env(tmp_path):
    checksums = realsize.cifar10_folder(tmp_path, 1, [0])
    code = ("from torchvision.datasets import CIFAR10; "
            f"print(CIFAR10({str(tmp_path)!r}, train=False).data.shape)")
    env = {**os.environ, **realsize.fixture_env(checksums)}
    patched = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert patched.returncode == 0 and "(1, 32, 32, 3)" in patched.stdout, patched.stderr[-2000:]
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert plain.returncode != 0 and "corrupted" in plain.stderr

"""Data files checked when read: images decoded at `prepare` (empty, truncated, not an
image), 16-bit PNGs scaled by their bit depth, the test split never augmented and resize
applied before a crop, and a manifest's tensor file missing, cut short or of another
size. Each is one line naming the file, before any costly work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional

from pefts.data import load_split, prepare, read_manifest
from pefts.errors import PeftsError


def image_folder(root: Path, side: int = 16) -> Path:
    """Two classes, two images each per split, each a horizontal ramp (so a resize and a
    crop give different pixels)."""
    ramp = np.tile(np.linspace(0, 255, side).astype(np.uint8), (side, 1))
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.fromarray(np.stack([ramp, ramp.T, ramp // 2], -1)).save(root / split / c / f"{i}.png")
    return root


@pytest.mark.parametrize("spoil, problem", [
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_bytes(p.read_bytes()[:60]), "does not decode"),
    (lambda p: p.write_text("hello, not an image"), "is not an image"),
])
@pytest.mark.parametrize("split", ["train", "test"])
def test_a_bad_image_is_named_at_prepare(tmp_path, spoil, problem, split):
    root = image_folder(tmp_path / "images")
    bad = root / split / "b" / "1.png"
    spoil(bad)
    with pytest.raises(PeftsError, match=f"image {bad} {problem}"):
        prepare("imagefolder", tmp_path / "p", root=str(root), images={"crop": 8})
    assert not (tmp_path / "p" / "manifest.json").exists()


def test_a_truncated_jpeg_is_named(tmp_path):
    root = image_folder(tmp_path / "images")
    bad = root / "test" / "a" / "0.png"
    jpeg = bad.with_suffix(".jpg")
    Image.open(bad).convert("RGB").resize((64, 64)).save(jpeg, quality=95)
    bad.unlink()
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    with pytest.raises(PeftsError, match=f"image {jpeg} does not decode"):
        prepare("imagefolder", tmp_path / "p", root=str(root), images={"crop": 8})


def test_sixteen_bit_pngs_are_scaled_by_their_depth(tmp_path):
    root = image_folder(tmp_path / "images", side=4)
    levels = np.array([[0, 16384, 32768, 65535]] * 4, dtype=np.uint16)
    for split in ("train", "test"):
        Image.fromarray(levels).save(root / split / "a" / "0.png")  # 16-bit greyscale
    manifest = prepare("imagefolder", tmp_path / "p", root=str(root), images={})
    x, _ = load_split({**manifest, "_dir": str(tmp_path / "p")}, "test")[0]
    expected = torch.tensor([0, 16384, 32768, 65535]) / 65535
    assert torch.allclose(x[:, 0, :], expected.expand(3, 4), atol=1 / 255), x[:, 0, :]


def test_the_test_split_is_never_augmented(tmp_path):
    root = image_folder(tmp_path / "images")
    prepare("imagefolder", tmp_path / "p", root=str(root),
            images={"resize": 12, "crop": 8, "augment": True})
    manifest = read_manifest(tmp_path / "p" / "manifest.json")
    test = load_split(manifest, "test")
    first = [test[i][0] for i in range(len(test))]
    assert all(torch.equal(a, test[i][0]) for i, a in enumerate(first))  # deterministic
    train = load_split(manifest, "train")
    torch.manual_seed(0)
    draws = [train[0][0] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws)  # while training is augmented


def test_resize_is_applied_before_the_crop(tmp_path):
    root = image_folder(tmp_path / "images")
    prepare("imagefolder", tmp_path / "p", root=str(root), images={"resize": 12, "crop": 8})
    x, _ = load_split(read_manifest(tmp_path / "p" / "manifest.json"), "test")[0]
    image = Image.open(root / "test" / "a" / "0.png").convert("RGB")
    expected = functional.to_tensor(functional.center_crop(functional.resize(image, 12), 8))
    crop_only = functional.to_tensor(functional.center_crop(image, 8))
    assert torch.equal(x, expected) and not torch.equal(x, crop_only)


@pytest.fixture
def digits_copy(digits, tmp_path) -> Path:
    copy = tmp_path / "d"
    copy.mkdir()
    for name in ("manifest.json", "digits.safetensors"):
        (copy / name).write_bytes((digits.parent / name).read_bytes())
    return copy / "manifest.json"


@pytest.mark.parametrize("spoil, needle", [
    (lambda d: (d / "digits.safetensors").unlink(), "do not exist"),
    (lambda d: (d / "digits.safetensors").write_bytes((d / "digits.safetensors").read_bytes()[:5000]),
     "corrupt or cut short"),
    (lambda d: (d / "manifest.json").write_text(json.dumps(
        {**json.loads((d / "manifest.json").read_text()), "num_test": 7})), "the manifest says 7"),
])
def test_a_manifests_tensor_file_is_checked(digits_copy, spoil, needle):
    spoil(digits_copy.parent)
    with pytest.raises(PeftsError, match=needle) as caught:
        load_split(read_manifest(digits_copy), "test")
    assert str(digits_copy.parent / "digits.safetensors") in str(caught.value)


def test_certify_names_a_cut_short_tensor_file_in_one_line(run_cli, digits_copy, tiny_base,
                                                           none_model, tmp_path):
    tensors = digits_copy.parent / "digits.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:5000])
    out = tmp_path / "o.tsv"
    code, _, err = run_cli("certify", "--model", none_model, "--base", tiny_base, "--data",
                           digits_copy, "--sigma", "0.5", "--n", "16", "--n0", "4", "--max", "2",
                           "--out", out, "--device", "cpu")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "corrupt or cut short" in lines[0], err
    assert not out.exists()


# counts, in a real process, every open of a file named manifest.json
COUNT_MANIFEST_OPENS = """
import atexit, os
opened = []
def count(event, args):
    if (event == "open" and isinstance(args[0], (str, bytes, os.PathLike))
            and os.fsdecode(args[0]).endswith("manifest.json")):
        opened.append(args[0])
sys.addaudithook(count)
atexit.register(lambda: print(f"manifest opened {len(opened)} times", file=sys.stderr))
"""


@pytest.mark.slow  # real fine-tuning and certifying processes
def test_a_job_reads_its_manifest_once(digits, tiny_base, none_model, tmp_path):
    """The manifest is read, checked and hashed once per job and passed on: a job that
    opened it again could read another file than the one it checked and recorded."""
    from tests.test_bad_files import pefts_process

    jobs = {
        "finetune": ["finetune", "--data", digits, "--base", tiny_base, "--method", "lora",
                     "--sigma", "0.5", "--train", '{"epochs": 0.01, "batch_size": 64}',
                     "--out", tmp_path / "lora.safetensors", "--device", "cpu"],
        "certify": ["certify", "--model", none_model, "--base", tiny_base, "--data", digits,
                    "--sigma", "0.5", "--n0", "4", "--n", "16", "--max", "2",
                    "--out", tmp_path / "c.tsv", "--device", "cpu"],
    }
    for name, args in jobs.items():
        code, _, err = pefts_process(*args, prelude=COUNT_MANIFEST_OPENS)
        assert code == 0, err
        assert "manifest opened 1 times" in err, (name, err[-300:])

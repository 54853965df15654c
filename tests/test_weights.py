"""External weights: fetched once by a local rule with their sha256, read from local files
by every compute job through the one verified loader (pefts.runtime.verified), fingerprinted in
the provenance and checked again at certify. Never the network: the fetchers are
replaced by ones that build small random timm and open_clip models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from pefts.errors import PeftsError
from pefts.finetuning.runs import finetune, train_base
from pefts.models.blackbox.encoder import build_encoder
from pefts.runtime.artifacts import load_meta
from pefts.runtime.files import file_digest
from pefts.runtime.provenance import read_sidecar
from pefts.study.weights import (
    FETCHERS,
    ExternalWeight,
    external_provenance,
    fetch,
    parse_weight,
    record_path,
    weights_digest,
)
from tests.conftest import TINY_SPEC
from tests.fixtures_baselines import register_tiny_clip
from tests.test_bad_files import one_line, pefts_process
from tests.test_presets import DRY_RESULTS, PRESETS, commands
from tests.test_workflow import ROOT

TINY_VIT = dict(img_size=8, patch_size=2, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture
def offline_timm(monkeypatch):
    """The timm fetcher, offline: random weights of the named architecture (the tiny base's
    own shapes for a ".tiny" tag); counts its calls."""
    calls = []

    def fake(name: str) -> dict:
        calls.append(name)
        torch.manual_seed(len(calls))
        kwargs = TINY_VIT if name.endswith(".tiny") else {}
        return timm.create_model(name.removesuffix(".tiny"), **kwargs).state_dict()

    monkeypatch.setitem(FETCHERS, "timm", fake)
    return calls


def test_fetch_writes_a_local_file_with_its_sha256_once(tmp_path, offline_timm):
    weight = ExternalWeight("timm", "vit_tiny_patch16_224.tiny")
    record = fetch(weight, str(tmp_path))
    file = tmp_path / "weights" / "timm" / "vit_tiny_patch16_224.tiny.safetensors"
    assert record["file"] == str(file) and record["sha256"] == file_digest(file)
    assert json.loads(record_path(file).read_text()) == record
    assert fetch(weight, str(tmp_path)) == record and len(offline_timm) == 1  # verified copy kept
    file.write_bytes(file.read_bytes()[:-10])  # a damaged copy is fetched again
    assert fetch(weight, str(tmp_path))["sha256"] == file_digest(file) and len(offline_timm) == 2
    assert not list(file.parent.glob("*.tmp"))


def test_weight_names_are_checked():
    assert parse_weight("timm:vit_base_patch16_224.mae") == ExternalWeight("timm", "vit_base_patch16_224.mae")
    for bad in ("vit_base", "nokind:x", "timm:"):
        with pytest.raises(PeftsError, match="--weight"):
            parse_weight(bad)


def test_jobs_read_the_fetched_files_and_record_their_sha256(digits, tmp_path, offline_timm):
    record = fetch(ExternalWeight("timm", "vit_tiny_patch16_224.tiny"), str(tmp_path))
    # the base starts from the local copy, its metadata names the hub weights and sha256
    meta = train_base(digits, tmp_path / "base.safetensors", TINY_SPEC, {"epochs": 0},
                      pretrained=False, pretrained_file=record["file"], device="cpu")
    assert meta["pretrained_sha256"] == record["sha256"]
    assert meta["pretrained_source"] == {"kind": "timm", "name": "vit_tiny_patch16_224.tiny"}
    assert torch.equal(load_file(tmp_path / "base.safetensors")["net.blocks.0.attn.qkv.weight"],
                       load_file(record["file"])["blocks.0.attn.qkv.weight"])
    # the coordinator encoder loads the same local file, no download (pretrained=True
    # with a file reads only the file)
    record = fetch(ExternalWeight("timm", "vit_tiny_patch16_224"), str(tmp_path))
    gen = torch.Generator().manual_seed(0)
    encoder = build_encoder("vit_tiny_patch16_224", 3, 0, 0, gen, file=record["file"])
    fetched = load_file(record["file"])
    assert torch.equal(encoder.net.patch_embed.proj.weight.float(),
                       fetched["patch_embed.proj.weight"])


def test_provenance_fingerprints_local_weight_files_and_folders(tmp_path):
    unet = tmp_path / "unet"
    (unet / "scheduler").mkdir(parents=True)
    (unet / "config.json").write_text("{}")
    (unet / "scheduler" / "scheduler_config.json").write_text("{}")
    encoder = tmp_path / "encoder.safetensors"
    encoder.write_bytes(b"weights")
    found = external_provenance({"weights": str(unet), "encoder_file": str(encoder),
                                 "encoder": "vit_base_patch16_224.mae", "rank": 2})
    assert found == {"weights": weights_digest(unet), "encoder_file": file_digest(encoder)}
    before = found["weights"]
    (unet / "scheduler" / "scheduler_config.json").write_text('{"changed": 1}')
    assert weights_digest(unet) != before  # any file of the folder counts


def test_finetune_records_the_sha256_of_its_external_weights(digits, tiny_base, tmp_path):
    encoder = tmp_path / "encoder.safetensors"
    from safetensors.torch import save_file
    save_file(timm.create_model("vit_tiny_patch16_224").state_dict(), encoder)
    out = tmp_path / "bb.safetensors"
    finetune(digits, tiny_base, out, "blackbox", 0.5,
             {"encoder": "vit_tiny_patch16_224", "encoder_file": str(encoder), "perturbations": 1},
             {"epochs": 0.01, "batch_size": 8}, device="cpu", eval_max=8)
    assert load_meta(out)["external_sha256"] == {"encoder_file": file_digest(encoder)}


@pytest.mark.parametrize("configfile", PRESETS)
def test_no_compute_job_of_a_preset_names_a_hub_model(configfile):
    results = DRY_RESULTS
    jobs = commands("experiments", "--configfile", configfile, "--config", f"results={results}")
    local = f"{results}/weights/"
    [fetch_job] = [j for j in jobs if j["command"] == "fetch-weights"]
    for job in jobs:
        if job["command"] in ("train-base",):
            assert "pretrained" not in job and job["pretrained-file"].startswith(local), job
        if job["command"] == "finetune" and job["method"] == "blackbox":
            hparams = json.loads(job["hparams"])
            assert hparams["encoder_file"].startswith(local), job
            assert hparams["clip_file"].startswith(local), job  # the queried CLIP too
        if job["command"] == "certify":
            assert {k for k in job if "pretrained" in k or "encoder" in k} == set(), job
    assert fetch_job["results"] == results
    # every baseline runs from what `pefts fetch-weights` fetches, and from nothing else
    words = fetch_job["words"]
    fetched = {ExternalWeight(*words[i + 1].split(":", 1)).file(results)
               for i, w in enumerate(words) if w == "--weight"}
    preset = yaml.safe_load((ROOT / configfile).read_text())
    for job in (j for j in jobs if j["command"] == "finetune"):
        hparams = json.loads(job["hparams"])
        local_files = {v for v in hparams.values() if isinstance(v, str) and v.startswith(local)}
        assert local_files <= fetched, job
        if job["method"] == "diffusion":  # the released checkpoint, and its own classifier
            own = preset["method_params"]["diffusion"]["hparams"]
            assert hparams["release"] == own["release"]
            assert hparams["weights"] == ExternalWeight("diffusion", own["release"]).file(results)
            if own.get("classifier"):
                assert hparams["classifier_file"] == ExternalWeight("timm", own["classifier"]).file(results)


# --- the verified loader: a changed or missing file is refused by the next job ----------------

def flip_byte(path: Path) -> None:
    """One byte changed in the middle of the file, inside a tensor: still valid safetensors."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def hash_line(code: int, err: str, what: str, file: Path, record: dict, label: str) -> None:
    """The one line: the file, the sha256 recorded at fetch and the actual one, and the
    command that fetches it again."""
    results = file.parents[2]
    one_line(code, err, f"{what} {file} changed since it was fetched",
             f"recorded sha256 {record['sha256']}", f"actual {file_digest(file)}",
             f"`pefts fetch-weights --weight {label} --results {results} --force`")


@pytest.fixture
def offline_clip(monkeypatch, tmp_path):
    """The open_clip fetcher, offline: random weights of the tiny CLIP."""
    from pefts.models.blackbox.clip import bare_model

    arch = register_tiny_clip(tmp_path / "clip-config")
    monkeypatch.setitem(FETCHERS, "open_clip", lambda name: bare_model(arch).state_dict())
    return arch


def test_a_fetched_base_changed_since_is_refused(digits, tmp_path, offline_timm):
    record = fetch(ExternalWeight("timm", "vit_tiny_patch16_224.tiny"), str(tmp_path / "r"))
    file = Path(record["file"])
    flip_byte(file)
    out = tmp_path / "base.safetensors"
    code, _, err = pefts_process("train-base", "--data", digits, "--out", out, "--arch",
                                 "vit_tiny_patch16_224", "--input-size", "8", "--model-kwargs",
                                 json.dumps(TINY_VIT), "--pretrained-file", file,
                                 "--train", '{"epochs": 0}', "--device", "cpu")
    hash_line(code, err, "pretrained weights file (base.pretrained_file)", file, record,
              "timm:vit_tiny_patch16_224.tiny")
    assert not out.exists()


@pytest.mark.slow  # real fine-tuning and certifying processes
def test_a_fetched_encoder_or_clip_changed_since_is_refused(digits, tiny_base, tmp_path,
                                                             offline_timm, offline_clip):
    results = str(tmp_path / "r")
    encoder = fetch(ExternalWeight("timm", "test_vit"), results)
    clip = fetch(ExternalWeight("open_clip", f"{offline_clip}:openai"), results)
    for record in (encoder, clip):
        flip_byte(Path(record["file"]))
    # the loaders themselves
    with pytest.raises(PeftsError, match="changed since it was fetched"):
        build_encoder("test_vit", 3, 0, 0, torch.Generator(), file=encoder["file"])
    from pefts.models.blackbox.clip import load_clip
    with pytest.raises(PeftsError, match="changed since it was fetched"):
        load_clip(clip["file"], ["a", "b"], offline_clip)
    # and a fine-tuning job that reads either, before any training
    jobs = [({"encoder": "test_vit", "encoder_file": encoder["file"]}, "encoder_file", encoder,
             "timm:test_vit"),
            ({"query": "clip", "clip_file": clip["file"], "clip_arch": offline_clip}, "clip_file",
             clip, f"open_clip:{offline_clip}:openai")]
    out = tmp_path / "bb.safetensors"
    for hparams, what, record, label in jobs:
        code, _, err = pefts_process("finetune", "--data", digits, "--base", tiny_base,
                                     "--method", "blackbox", "--sigma", "0.5", "--hparams",
                                     json.dumps({**hparams, "perturbations": 1}), "--out", out,
                                     "--device", "cpu")
        hash_line(code, err, what, Path(record["file"]), record, label)
        assert not out.exists()


@pytest.mark.slow  # real fine-tuning and certifying processes
def test_an_encoder_changed_after_fine_tuning_is_refused_at_certify(digits, tiny_base, tmp_path):
    from tests.fixtures_baselines import timm_weights_file

    encoder = timm_weights_file(tmp_path / "encoder.safetensors", "test_vit")  # a user's own file
    model = tmp_path / "bb.safetensors"
    finetune(digits, tiny_base, model, "blackbox", 0.5,
             {"encoder": "test_vit", "encoder_file": str(encoder), "perturbations": 1},
             {"epochs": 0.01, "batch_size": 8}, device="cpu", eval_max=8)
    trained = file_digest(encoder)
    assert load_meta(model)["external_sha256"] == {"encoder_file": trained}
    out = tmp_path / "c.tsv"
    certify = ["certify", "--model", model, "--base", tiny_base, "--data", digits, "--sigma", "0.5",
               "--n0", "4", "--n", "16", "--max", "2", "--device", "cpu"]
    code, _, err = pefts_process(*certify, "--out", tmp_path / "before.tsv")
    assert code == 0, err  # certified with the encoder it was trained with; its sidecar says so
    assert read_sidecar(tmp_path / "before.tsv")["settings"]["external"] == {"encoder_file": trained}
    flip_byte(encoder)
    code, _, err = pefts_process(*certify, "--out", out)
    one_line(code, err, f"encoder_file {encoder} is not the file {model} was trained with",
             f"recorded sha256 {trained}", f"actual {file_digest(encoder)}")
    assert not out.exists()


def test_a_missing_fetched_file_names_the_fetch_command(digits, tmp_path):
    missing = tmp_path / "r" / "weights" / "timm" / "vit_tiny_patch16_224.safetensors"
    out = tmp_path / "base.safetensors"
    code, _, err = pefts_process("train-base", "--data", digits, "--out", out, "--arch",
                                 "vit_tiny_patch16_224", "--input-size", "8", "--model-kwargs",
                                 json.dumps(TINY_VIT), "--pretrained-file", missing,
                                 "--device", "cpu")
    one_line(code, err, f"{missing} does not exist", "`pefts fetch-weights --configfile")
    assert not out.exists()


def test_each_file_is_hashed_once_per_process(tmp_path, monkeypatch):
    import pefts.runtime.verified

    hashed = []
    monkeypatch.setattr(pefts.runtime.verified, "file_digest", lambda p: hashed.append(p) or file_digest(p))
    file = tmp_path / "w.safetensors"
    file.write_bytes(b"weights")
    first = pefts.runtime.verified.verified(file, "w")
    assert pefts.runtime.verified.verified(file, "w") == first and len(hashed) == 1
    file.write_bytes(b"other weights")  # changed: size and mtime differ, hashed again
    os.utime(file, ns=(1, 1))
    assert pefts.runtime.verified.verified(file, "w") != first and len(hashed) == 2


def test_a_released_diffusion_checkpoint_is_fetched_from_its_authors_url(tmp_path, monkeypatch):
    """`pefts fetch-weights --weight diffusion:NAME` reads the authors' .pt from their
    blob storage without unpickling code, refuses one that is not the model's, and keeps
    a safetensors copy with its sha256 that the diffusion row then loads."""
    from dataclasses import replace

    from pefts.models.diffusion import releases
    from pefts.models.diffusion.loading import build_unet, load_release

    name = "improved-diffusion-cifar10-uncond"
    small = dict(model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(16,))
    release = releases.RELEASES[name]
    monkeypatch.setitem(releases.RELEASES, name, replace(release, unet={**release.unet, **small}))
    torch.manual_seed(0)
    state = build_unet(name).state_dict()
    asked = []

    def hub(url, **kwargs):
        asked.append((url, kwargs.get("weights_only")))
        return dict(served)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", hub)
    served = {k: v for k, v in state.items() if not k.startswith("out.")}  # a wrong file
    with pytest.raises(PeftsError, match="not the checkpoint this UNet expects.*missing"):
        fetch(parse_weight(f"diffusion:{name}"), str(tmp_path))
    assert not list((tmp_path / "weights").rglob("*.safetensors"))
    served = state
    record = fetch(parse_weight(f"diffusion:{name}"), str(tmp_path))
    assert asked[-1] == ("https://openaipublic.blob.core.windows.net/diffusion/march-2021/"
                         "cifar10_uncond_50M_500K.pt", True)
    assert record["file"] == str(tmp_path / "weights" / "diffusion" / f"{name}.safetensors")
    assert record["sha256"] == file_digest(record["file"])
    unet = load_release(record["file"], name)[0]
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in state.items())


def test_only_weight_keys_are_hashed_never_a_name_that_happens_to_be_a_path(tmp_path,
                                                                           monkeypatch):
    """Run from a folder holding base/ and prompt.txt: a classifier named 'base' or a
    template that names a file were recorded as external weights, the folder hashed."""
    from pefts.methods import METHODS
    from pefts.runtime.verified import WEIGHT_KEYS, weight_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "big.bin").write_bytes(b"x")
    (tmp_path / "prompt.txt").write_text("a photo of a {}")
    (tmp_path / "unet.pt").write_bytes(b"weights")
    hparams = {"classifier": "base", "encoder": "base", "clip_arch": "base",
               "prompt_template": "prompt.txt", "weights": "unet.pt"}
    assert weight_paths(hparams) == {"weights": "unet.pt"}
    assert external_provenance(hparams) == {"weights": file_digest(tmp_path / "unet.pt")}
    # every key of WEIGHT_KEYS is a method's hyper-parameter (a renamed one would be missed)
    declared = {name for cls in METHODS.values() for name in cls.specs}
    assert set(WEIGHT_KEYS) <= declared

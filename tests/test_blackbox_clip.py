"""Zero-shot CLIP as the black box: its logits are CLIP's, its classes are text prompts,
the query interface hides it, and a black-box run on it trains, saves, reloads and
certifies from a local weights file (a tiny random open_clip model, no download)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pefts.artifacts import load_meta
from pefts.blackbox import QueryModel
from pefts.blackbox.clip import CLIP_MEAN, CLIP_STD, bare_model, load_clip
from pefts.errors import PeftsError
from pefts.methods import load_model
from pefts.runs import finetune
from tests.fixtures_baselines import clip_weights_file, register_tiny_clip

NAMES = ["airplane", "cat", "dog"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    arch = register_tiny_clip(folder)
    return arch, clip_weights_file(folder / "clip.safetensors", arch)


def test_logits_are_zero_shot_clip(tiny_clip):
    arch, file = tiny_clip
    model = load_clip(file, NAMES, arch)
    import open_clip

    reference = bare_model(arch)
    open_clip.load_checkpoint(reference, str(file))
    reference.eval()
    x = torch.rand(2, 3, 32, 32)  # the tiny CLIP's own input size: no resize
    with torch.no_grad():
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        image = F.normalize(reference.encode_image((x - mean) / std), dim=-1)
        tokens = open_clip.get_tokenizer(arch)([f"a photo of a {n}." for n in NAMES])
        text = F.normalize(reference.encode_text(tokens), dim=-1)
        expected = reference.logit_scale.exp() * image @ text.T
        got = model(x)
    assert torch.allclose(got, expected, atol=1e-4)
    # another template changes the class weights: the names really are read as prompts
    other = load_clip(file, NAMES, arch, template="a drawing of a {}.")
    assert not torch.allclose(other(x), got, atol=1e-4)
    # native-resolution images are resized inside the model
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 3)


def test_clip_behind_the_query_interface_gives_no_gradient(tiny_clip):
    arch, file = tiny_clip
    query = QueryModel(load_clip(file, NAMES, arch))
    x = torch.rand(3, 3, 16, 16, requires_grad=True)
    probs = query(x)
    assert not probs.requires_grad and probs.grad_fn is None
    assert torch.allclose(probs.sum(1), torch.ones(3))
    assert (query.images, query.calls) == (3, 1)
    assert list(query.parameters()) == [] and query.state_dict() == {}


def test_missing_or_wrong_weights_are_one_clear_error(tiny_clip, tmp_path):
    arch, file = tiny_clip
    with pytest.raises(PeftsError, match="does not exist"):
        load_clip(tmp_path / "absent.safetensors", NAMES, arch)
    with pytest.raises(PeftsError, match="do not fit"):
        load_clip(file, NAMES, "ViT-B-32")
    with pytest.raises(PeftsError, match="unknown open_clip architecture"):
        load_clip(file, NAMES, "no-such-clip")


def test_blackbox_run_on_clip_trains_saves_and_reloads(tiny_clip, digits, tiny_base, tmp_path):
    arch, file = tiny_clip
    out = tmp_path / "model.safetensors"
    hparams = dict(query="clip", clip_file=str(file), clip_arch=arch, perturbations=1)
    meta = finetune(digits, tiny_base, out, "blackbox", 0.25, hparams,
                    {"epochs": 0.05, "batch_size": 32}, device="cpu", eval_max=20)
    assert meta["metrics"]["queries"] > 0
    assert meta["class_names"] == [str(d) for d in range(10)]
    parts = meta["frozen_parts"]
    assert parts["queried CLIP"] == sum(p.numel() for p in bare_model(arch).parameters())
    assert parts["coordinator encoder"] > 0
    assert meta["frozen_added_params"] == sum(parts.values())
    model, saved = load_model(out, tiny_base)
    assert load_meta(out)["hparams"]["query"] == "clip"
    x = torch.rand(4, 3, 8, 8)
    # the reloaded model answers with CLIP (zero-shot over the digits' names), not the base
    direct = load_clip(file, saved["class_names"], arch)
    prompted = (x + model.coordinator(x)).clamp(0, 1)
    with torch.no_grad():
        assert torch.allclose(model(x).exp(), torch.softmax(direct(prompted), 1), atol=1e-5)


def test_fetch_weights_writes_clip_as_a_loadable_file_and_its_digest(tiny_clip, tmp_path, monkeypatch):
    """The fetch step's open_clip kind, with open_clip's download replaced by the tiny
    model: the file it writes loads offline, and its record holds the file's digest."""
    import open_clip

    from pefts.files import file_digest
    from pefts.weights import ExternalWeight, fetch

    arch, _ = tiny_clip
    asked, tiny = [], bare_model(arch)

    def download(name, pretrained=None, **kwargs):
        asked.append((name, pretrained))
        return tiny

    monkeypatch.setattr(open_clip, "create_model", download)
    record = fetch(ExternalWeight("open_clip", "ViT-B-16:openai"), str(tmp_path / "results"))
    out = record["file"]
    assert asked == [("ViT-B-16", "openai")]
    assert record["sha256"] == file_digest(out)
    monkeypatch.undo()
    assert load_clip(out, NAMES, arch)(torch.rand(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(PeftsError, match="no pretrained tag"):
        fetch(ExternalWeight("open_clip", "ViT-B-16:no-such-tag"), str(tmp_path / "results"))

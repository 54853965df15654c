"""Zero-shot CLIP as the black box: its logits are CLIP's, its classes are text prompts,
the query interface hides it, and a black-box run on it trains, saves, reloads and
certifies from a local weights file (a tiny random open_clip model, no download)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pefts.errors import PeftsError
from pefts.finetuning.runs import finetune
from pefts.methods import load_model
from pefts.models.blackbox import QueryModel
from pefts.models.blackbox.clip import CLIP_MEAN, CLIP_STD, bare_model, load_clip
from pefts.runtime.artifacts import load_meta
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
    # the reloaded model answers with CLIP (zero-shot over the digits' names), not the base,
    # on the prompted frame: CLIP's input size and normalisation (BlackVIP's placement)
    direct = load_clip(file, saved["class_names"], arch)
    assert model.frame.size == direct.input_size
    with torch.no_grad():
        u = model.frame.normalise(x)
        prompted = model.frame.pixels(model.frame.clip(u + model.coordinator(u)))
        assert torch.allclose(model(x).exp(), torch.softmax(direct(prompted), 1), atol=1e-5)
    # trained in training mode, reloaded with the BatchNorm statistics SPSA's queries left
    # (a fresh decoder's are 0 and 1) and in eval mode, as the certifier needs
    means = [b for name, b in model.coordinator.statistics().items() if name.endswith("running_mean")]
    assert means and all(float(m.abs().sum()) > 0 for m in means)
    assert not model.training and not model.coordinator.decoder.training


def test_fetch_weights_writes_clip_as_a_loadable_file_and_its_digest(tiny_clip, tmp_path, monkeypatch):
    """The fetch step's open_clip kind, with open_clip's download replaced by the tiny
    model: the file it writes loads offline, and its record holds the file's digest."""
    import open_clip

    from pefts.runtime.files import file_digest
    from pefts.study.weights import ExternalWeight, fetch

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


@pytest.mark.slow  # four CLIP ViT-B/16 builds at full size
def test_the_presets_clip_for_openai_has_quick_gelu_as_open_clips_own(tmp_path):
    """OpenAI trained CLIP ViT-B/16 with QuickGELU: the CLIP the presets build for the
    ``openai`` tag has it in every residual block and gives the logits of open_clip's
    ViT-B-16-quickgelu on the same (random) weights; the plain GELU model does not."""
    import open_clip
    from open_clip.transformer import QuickGELU

    from pefts.methods import get_method
    from tests.fixtures_baselines import preset_blackbox

    file = clip_weights_file(tmp_path / "clip.safetensors")
    cifar, imagenet = (preset_blackbox(f"configs/{name}-vitb16.yaml") for name in ("cifar10", "imagenet"))
    keys = ("query", "clip_arch", "clip_pretrained", "clip_file", "prompt_template")
    assert {k: cifar[k] for k in keys} == {k: imagenet[k] for k in keys}  # one CLIP for both
    assert cifar["clip_pretrained"] == "openai"
    method = get_method("blackbox", **{**imagenet, "clip_file": str(file)})
    method.class_names = NAMES
    clip = method.zero_shot_clip()
    blocks = clip.visual.transformer.resblocks
    assert len(blocks) == 12 and all(isinstance(b.mlp.gelu, QuickGELU) for b in blocks)
    reference = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None, load_weights=False)
    open_clip.load_checkpoint(reference, str(file))
    reference.eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        image = F.normalize(reference.encode_image((x - mean) / std), dim=-1)
        tokens = open_clip.get_tokenizer("ViT-B-16")([f"a photo of a {n}." for n in NAMES])
        text = F.normalize(reference.encode_text(tokens), dim=-1)
        expected = reference.logit_scale.exp() * image @ text.T
        got = clip(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        # the same weights in open_clip's GELU "ViT-B-16": other logits
        gelu = load_clip(file, NAMES, "ViT-B-16")
        assert (gelu(x) - expected).abs().max() > 1e-3


def test_the_fetch_record_says_quick_gelu_and_a_contradiction_is_refused(tiny_clip, tmp_path,
                                                                         monkeypatch):
    """open_clip's pretrained config of the tag decides the architecture of a fetched
    file; the record beside it says so, and a record that contradicts the tag is an error."""
    import json

    import open_clip

    from pefts.models.blackbox.clip import weights_need_quick_gelu
    from pefts.study.weights import ExternalWeight, fetch

    arch, _ = tiny_clip
    built, tiny = [], {q: bare_model(arch, q) for q in (False, True)}

    def download(name, pretrained=None, force_quick_gelu=False, **kwargs):
        built.append(force_quick_gelu)
        return tiny[force_quick_gelu]

    monkeypatch.setattr(open_clip, "create_model", download)
    results = str(tmp_path / "results")
    openai = fetch(ExternalWeight("open_clip", "ViT-B-16:openai"), results)
    laion = fetch(ExternalWeight("open_clip", "ViT-B-16:laion2b_s34b_b88k"), results)
    monkeypatch.undo()
    assert built == [True, False]
    assert openai["quick_gelu"] is True and laion["quick_gelu"] is False
    assert weights_need_quick_gelu(openai["file"], "ViT-B-16", None)  # the record alone
    assert weights_need_quick_gelu(openai["file"], "ViT-B-16", "openai")
    with pytest.raises(PeftsError, match="quick_gelu"):
        weights_need_quick_gelu(laion["file"], "ViT-B-16", "openai")
    # a local file without a record: the tag decides
    local = tmp_path / "local.safetensors"
    local.write_bytes(b"")
    assert weights_need_quick_gelu(local, "ViT-B-16", "openai")
    assert not weights_need_quick_gelu(local, "ViT-B-16", None)
    record = json.loads(open(f"{openai['file']}.json").read())
    assert record["quick_gelu"] is True

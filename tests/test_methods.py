"""The fine-tuning methods: trainable counts, exactness of the inserted modules, save/load,
and a short noisy training run. Most tests use a tiny ViT; ViT-B/16 is built without
weights (meta device) for the paper's counts, and randomly initialised once to check that
splitting qkv is exact. Nothing is downloaded."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pefts.methods import METHODS, get_method, load_model
from pefts.methods.adapter import Bottleneck, WithAdapter
from pefts.methods.lora import split_qkv
from pefts.models.classifier import BaseSpec, PixelClassifier, build_classifier, count_parameters
from pefts.runtime.artifacts import file_digest, save_artifact
from pefts.training.loop import TrainConfig

SMALL = dict(img_size=8, patch_size=2, embed_dim=64, depth=4, num_heads=4)
VIT_B = BaseSpec("vit_base_patch16_224", 10, 224)
# small enough that the saved state is clearly smaller than the tiny model itself
SMALL_HPARAMS = {"lora": {"rank": 2}, "prompt": {"length": 4}, "adapter": {"bottleneck": 4}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models here are tiny: on a busy CPU a second intra-op thread only spins
    (10 training steps went from 0.2 s to several seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_base(seed: int = 0, **model_kwargs) -> PixelClassifier:
    torch.manual_seed(seed)
    spec = BaseSpec("vit_tiny_patch16_224", 10, 8, model_kwargs={**SMALL, **model_kwargs})
    return build_classifier(spec).eval()


def images(n: int = 4, side: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


def trainable_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


# --- trainable counts on ViT-B/16 with a 10-class head (the paper's settings) ------------

@pytest.mark.parametrize("method, hparams, expected", [
    ("lora", {"rank": 2}, 81_418),
    ("prompt", {"length": 100}, 929_290),
    # by hand: 2 adapters x 12 blocks x (768*64 + 64 + 64*768 + 768) + head 7,690
    ("adapter", {}, 2_386_954),
    ("adapter", {"bottleneck": 91}, 3_382_930),  # the preset's, closest to the paper's 3.387M
    # Houlsby's layer norms add 2 x 2 x 768 per block and the final norm's 2 x 768: 38,400
    ("adapter", {"train_norms": True}, 2_386_954 + 38_400),
    ("adapter", {"bottleneck": 90, "train_norms": True}, 3_384_442),
    ("full", {}, None),
])
def test_trainable_count_vit_b16(method, hparams, expected):
    # counting needs shapes only: on the meta device the 86M weights are never allocated
    with torch.device("meta"):
        base = build_classifier(VIT_B)
        model = get_method(method, **hparams).build(base)
    if expected is None:  # full fine-tuning trains every parameter of the base model
        expected = count_parameters(base)
        assert 85_000_000 < expected < 86_500_000
    print(f"{method} {hparams}: {count_parameters(model, trainable_only=True):,} trainable")
    assert count_parameters(model, trainable_only=True) == expected
    state = get_method(method, **hparams).trainable_state(model)
    assert sum(t.numel() for t in state.values()) == expected


# --- exactness of what the methods insert ---------------------------------------------------

def test_split_qkv_matches_fused_small():
    base = small_base()
    x = images()
    before = logits(base, x)
    split_qkv(base.net)
    torch.testing.assert_close(logits(base, x), before, atol=1e-5, rtol=0)


def test_split_qkv_matches_fused_vit_b16():
    torch.manual_seed(0)
    base = build_classifier(VIT_B)
    x = images(n=2, side=32)
    before = logits(base, x)
    split_qkv(base.net)
    torch.testing.assert_close(logits(base, x), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_fresh_method_keeps_base_logits(method):
    base = small_base()
    x = images()
    before = logits(base, x)
    model = get_method(method).build(base)
    torch.testing.assert_close(logits(model, x), before, atol=1e-5, rtol=0)


def test_adapter_wrapper_forwards_attention_mask():
    block = small_base().net.blocks[0]
    x = torch.randn(2, 5, 64)
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[:, :2] = True  # every query may only look at the first two tokens
    with torch.no_grad():
        masked, unmasked = block(x, attn_mask=mask), block(x)
        block.attn = WithAdapter(block.attn, Bottleneck(64, 4))
        torch.testing.assert_close(block(x, attn_mask=mask), masked)
    assert not torch.allclose(masked, unmasked)


def test_prompt_changes_logits_with_right_shape():
    base = small_base()
    x = images()
    before = logits(base, x)
    after = logits(get_method("prompt", length=5).build(base), x)
    assert after.shape == (4, 10)
    assert torch.isfinite(after).all()
    assert not torch.allclose(after, before)


def test_prompt_init_bound_vit_b16():
    # ViT-B/16's patch and width (the bound depends on nothing else), one block for speed
    vit_b_block = dict(img_size=32, patch_size=16, embed_dim=768, depth=1, num_heads=12)
    base = build_classifier(BaseSpec("vit_base_patch16_224", 10, 32, model_kwargs=vit_b_block))
    prompts = get_method("prompt", length=100).build(base).net.prompts
    assert prompts.shape == (1, 100, 768)
    assert prompts.abs().max() <= 0.0625  # sqrt(6 / (3*16*16 + 768))
    assert prompts.abs().max() > 0.05


@pytest.mark.parametrize("vit_kwargs", [
    {},  # class token, global_pool "token"
    {"global_pool": "avg", "reg_tokens": 2, "no_embed_class": True},
])
def test_prompt_token_layout(vit_kwargs):
    """Prompts sit right after the prefix tokens, are replaced at every block, and are
    gone again before the final norm, so the head pools only the base model's tokens."""
    length = 3
    base = small_base(**vit_kwargs)
    n = base.net.num_prefix_tokens
    x = images()
    seen: dict[str, list[torch.Tensor]] = {"base": [], "prompt": []}

    def record(key: str, net: nn.Module) -> list:
        modules = [net.blocks[0], net.blocks[1], net.norm]
        return [m.register_forward_hook(lambda _m, args, _out: seen[key].append(args[0]))
                for m in modules]

    handles = record("base", base.net)
    logits(base, x)
    for h in handles:
        h.remove()
    model = get_method("prompt", length=length).build(base)
    record("prompt", model.net.net)
    logits(model, x)

    (base0, _, base_norm), (in0, in1, norm_in) = seen["base"], seen["prompt"]
    prompts = model.net.prompts
    assert norm_in.shape == base_norm.shape
    torch.testing.assert_close(in0[:, :n], base0[:, :n])
    torch.testing.assert_close(in0[:, n + length:], base0[:, n:])
    for i, block_in in enumerate((in0, in1)):
        torch.testing.assert_close(block_in[:, n:n + length], prompts[i].expand(4, -1, -1))


def test_prompt_dropout_only_in_training():
    model = get_method("prompt", length=8, dropout=0.5).build(small_base())
    x = images()
    torch.testing.assert_close(logits(model, x), logits(model, x))
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))


# --- save / load ----------------------------------------------------------------------------

# SUNet sized for 8x8 images; diffusion needs a diffusers folder, so
# tests/test_baselines_diffusion.py round-trips it through finetune and load_model
ROUND_TRIP_HPARAMS = {**SMALL_HPARAMS, "sunet": {"img_size": 8, "patch_size": 1, "embed_dim": 8,
                                                 "depths": [1, 1], "heads": [1, 1], "window": 4}}


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"diffusion"}))
def test_save_load_round_trip(method, tmp_path):
    hparams = ROUND_TRIP_HPARAMS.get(method, {})
    peft = get_method(method, **hparams)
    model = peft.build(small_base())
    # the state's tensors share storage with the model, so this perturbs the model
    torch.manual_seed(3)
    state = peft.trainable_state(model)
    with torch.no_grad():
        for t in state.values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.1)

    # the production path: base and fine-tuned weights on disk, rebuilt by load_model
    base_file, tuned_file = tmp_path / "base.safetensors", tmp_path / "tuned.safetensors"
    base = small_base()
    classes = [str(c) for c in range(base.spec.num_classes)]
    save_artifact(base_file, base.state_dict(), {"kind": "base", "spec": base.spec.to_dict(),
                                                 "classes": classes})
    save_artifact(tuned_file, state, {"kind": "finetuned", "method": method, "hparams": hparams,
                                      "classes": classes,
                                      "base_sha256": file_digest(base_file)})
    loaded, meta = load_model(tuned_file, base_file)
    assert meta["method"] == method
    x = images()
    torch.testing.assert_close(logits(loaded, x), logits(model, x), atol=0, rtol=0)

    if method in SMALL_HPARAMS:  # a PEFT state holds only its own trainable tensors
        assert set(state) == trainable_names(model)
        state_bytes = sum(t.numel() * t.element_size() for t in state.values())
        model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        assert state_bytes < model_bytes / 5


# --- a short noisy training run ---------------------------------------------------------------

def toy_data(n: int = 32) -> TensorDataset:
    """Each class is a fixed random image plus jitter: learnable in a few steps."""
    gen = torch.Generator().manual_seed(5)
    patterns = torch.rand(10, 3, 8, 8, generator=gen)
    labels = torch.arange(n) % 10
    x = (patterns[labels] + 0.1 * torch.randn(n, 3, 8, 8, generator=gen)).clamp(0, 1)
    return TensorDataset(x, labels)


@torch.no_grad()
def noisy_loss(model: nn.Module, data: TensorDataset, sigma: float) -> float:
    x, y = data.tensors
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)) * sigma
    return float(nn.functional.cross_entropy(model.eval()(x + noise), y))


@pytest.mark.parametrize("method, hparams", [
    ("prompt", {"length": 4}),
    ("adapter", {"bottleneck": 8}),
])
def test_short_training_changes_only_trainable(method, hparams):
    peft = get_method(method, **hparams)
    model = peft.build(small_base())
    data, sigma = toy_data(), 0.1
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss_before = noisy_loss(model, data, sigma)

    # full batches: ten steps on one objective, so the loss reliably goes down
    cfg = TrainConfig(epochs=10, batch_size=len(data), lr=3e-3, schedule="constant")
    result = peft.fit(model, data, sigma, cfg, "cpu")

    assert result["train_loss"] > 0
    trainable = trainable_names(model)
    for name, p in model.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"{name} did not train"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
    assert noisy_loss(model, data, sigma) < loss_before


@pytest.mark.parametrize("method, hparams", [("lora", {"rank": 2}), ("prompt", {"length": 4}),
                                             ("adapter", {"bottleneck": 4})])
def test_saved_artifact_is_about_its_trainable_parameters(method, hparams, digits, tiny_base,
                                                          tmp_path):
    from pefts.finetuning.runs import finetune

    out = tmp_path / "model.safetensors"
    meta = finetune(digits, tiny_base, out, method, 0.25, hparams,
                    {"epochs": 0.05, "batch_size": 64}, "cpu")
    trainable_bytes = 4 * meta["trainable_params"]  # float32
    print(f"{method}: {out.stat().st_size:,} bytes for {meta['trainable_params']:,} parameters")
    assert meta["trainable_params"] < meta["base_params"] / 4
    assert out.stat().st_size <= 2 * trainable_bytes + 4096  # tensors + safetensors header

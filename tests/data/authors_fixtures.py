"""Numbers produced by the authors' own code, for the tests that hold ours to it
(tests/test_authors_code.py): Carlini et al.'s diffusion denoised smoothing
(ethz-spylab/diffusion_denoised_smoothing: cifar10/DRM.py, cifar10/certify.py and the
improved-diffusion / guided-diffusion copies beside them) and BlackVIP's coordinator
(changdaeoh/BlackVIP: trainers/visual_prompters.py) run through Hugging Face
transformers. Writes tests/data/authors_fixtures.json; never run by the tests.

Their code is not part of pefts: extract it outside the repository, install
transformers outside the project's environment, and point this script at both:

    git clone https://github.com/ethz-spylab/diffusion_denoised_smoothing /tmp/i28/dds
    git clone https://github.com/changdaeoh/BlackVIP /tmp/i28/blackvip
    pip install transformers  # the project's venv had 5.24.0 already, as a dependency
    PYTHONPATH=$PWD python tests/data/authors_fixtures.py /tmp/i28/dds /tmp/i28/blackvip

(for this file: the two repositories' HEADs 699e7a5 and the one `fetch` returned on
2026-12-07, extracted with git archive; torch 2.14.1, transformers 5.24.0, CPU.)

Nothing is downloaded: the networks are small ones of the same code paths with fixed
weights that need no random generator (tests/data/diffusion_keys.py's ``hashed``), so
the tests rebuild the same weights in our modules. Only the authors' checkpoints'
names are redirected to those small networks; every line that computes runs as they
wrote it.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import torch
from torch import nn

from tests.data.diffusion_keys import SETTINGS, SMALL, fixed_weights, hashed

CIFAR = "improved-diffusion-cifar10-uncond"
SIGMAS = {"cifar10": [0.001, 0.25, 0.5, 0.75, 1.0], "imagenet": [0.001, 0.25, 0.5, 1.0]}
DRM_SIGMA = 0.25  # the CIFAR-10 DiffusionRobustModel run below
CLASSIFIER_PROBES = 1024  # values of the 3 x 224 x 224 classifier input kept
# the MAE encoder: ViT-B/16's width and heads (the decoder after it is built for 768),
# one block instead of twelve
MAE = dict(hidden_size=768, num_hidden_layers=1, num_attention_heads=12, intermediate_size=3072,
           image_size=224, patch_size=16)


def rounded(values: torch.Tensor) -> list[float]:
    """float32 values to 8 significant digits: exact to 1e-7 relative, half the file."""
    return [float(f"{v:.8g}") for v in values.flatten().tolist()]


def drm_image() -> torch.Tensor:
    """The clean CIFAR-10-sized image in [0, 1] fed to their DiffusionRobustModel."""
    return (hashed(3 * 32 * 32, -2).reshape(1, 3, 32, 32) + 1) / 2


def drm_noise() -> torch.Tensor:
    """The noise their ``denoise`` draws with randn_like, fixed."""
    return 2.0 * hashed(3 * 32 * 32, -3).reshape(1, 3, 32, 32)


def mae_input() -> torch.Tensor:
    """A CLIP-normalised 224 x 224 image, as BlackVIP's coordinator is given."""
    return 2.0 * hashed(3 * 224 * 224, -4).reshape(1, 3, 224, 224)


def mae_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fixed weights for a timm ViT state dict: ``hashed`` at 0.05, LayerNorms at 1 +- 0.05
    and 0.05, and the embedding (patch projection, CLS, positions) at 1e-3, so that the
    first LayerNorm sees a token variance near 1e-6, where its eps shows."""
    out = {}
    for i, (key, value) in enumerate(state.items()):
        h = hashed(value.numel(), 100 + i).reshape(value.shape)
        if key.startswith(("patch_embed.", "cls_token", "pos_embed")):
            out[key] = 1e-3 * h
        elif ".norm" in key and key.endswith(".weight"):
            out[key] = 1 + 0.05 * h
        else:
            out[key] = 0.05 * h
    return out


def timm_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's ViT keys -> Hugging Face ViTMAEModel's (q, k, v split)."""
    out = {"embeddings.cls_token": state["cls_token"],
           "embeddings.position_embeddings": state["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    blocks = {k.split(".")[1] for k in state if k.startswith("blocks.")}
    for b in sorted(blocks, key=int):
        p, h = f"blocks.{b}.", f"encoder.layer.{b}."
        for kind in ("weight", "bias"):
            q, k, v = state[p + f"attn.qkv.{kind}"].chunk(3)
            out |= {h + f"attention.attention.query.{kind}": q, h + f"attention.attention.key.{kind}": k,
                    h + f"attention.attention.value.{kind}": v,
                    h + f"attention.output.dense.{kind}": state[p + f"attn.proj.{kind}"],
                    h + f"layernorm_before.{kind}": state[p + f"norm1.{kind}"],
                    h + f"layernorm_after.{kind}": state[p + f"norm2.{kind}"],
                    h + f"intermediate.dense.{kind}": state[p + f"mlp.fc1.{kind}"],
                    h + f"output.dense.{kind}": state[p + f"mlp.fc2.{kind}"]}
    return {k: v.contiguous() for k, v in out.items()}


def timm_mae() -> nn.Module:
    """The small timm ViT the weights are written for (and the tests build)."""
    import timm

    return timm.create_model("vit_base_patch16_224.mae", pretrained=False, num_classes=0,
                             embed_dim=MAE["hidden_size"], depth=MAE["num_hidden_layers"],
                             num_heads=MAE["num_attention_heads"])


def carlini(dds: Path) -> dict:
    """t* from their certify.py loop, the noise their q_sample adds at t* (in [0, 1]
    units, per unit of the input's scale), and one CIFAR-10 DiffusionRobustModel
    forward on a small UNet of the released one's code path."""
    out: dict = {}
    for data, package in (("cifar10", "improved_diffusion"), ("imagenet", "guided_diffusion")):
        sys.path.insert(0, str(dds / data))
        for name in [m for m in sys.modules if m == "DRM" or m.startswith(package)]:
            del sys.modules[name]
        drm = importlib.import_module("DRM")
        script_util = importlib.import_module(f"{package}.script_util")
        _, diffusion = script_util.create_model_and_diffusion(
            **script_util.args_to_dict(drm.Args(), script_util.model_and_diffusion_defaults().keys()))
        model = types.SimpleNamespace(diffusion=diffusion)
        source = (dds / data / "certify.py").read_text()
        loop = source[source.index("    target_sigma"):source.index("    # Define the smoothed")]
        rows = []
        for sigma in SIGMAS[data]:
            scope = {"model": model, "args": types.SimpleNamespace(sigma=sigma)}
            exec(compile("if True:\n" + loop, "certify.py", "exec"), scope)
            t = int(scope["t"])
            noise = diffusion.sqrt_one_minus_alphas_cumprod[t] / (2 * diffusion.sqrt_alphas_cumprod[t])
            rows.append({"sigma": sigma, "t": t, "noise": float(noise)})
        out[data] = rows
        if data == "cifar10":
            t = next(r["t"] for r in rows if r["sigma"] == DRM_SIGMA)
            out["drm_cifar10"] = drm_forward(drm, script_util, t)
        sys.path.remove(str(dds / data))
    return out


def drm_forward(drm: types.ModuleType, script_util: types.ModuleType, t: int) -> dict:
    """Their DiffusionRobustModel.forward at sigma 0.25 on a small UNet (settings of
    diffusion_keys.SMALL) with fixed weights, their randn_like returning fixed noise and
    .cuda() a no-op; what reaches their classifier is recorded."""

    class Args(drm.Args):
        num_channels = SMALL[CIFAR]["num_channels"]
        num_res_blocks = SMALL[CIFAR]["num_res_blocks"]

    unet, diffusion = script_util.create_model_and_diffusion(
        **script_util.args_to_dict(Args(), script_util.model_and_diffusion_defaults().keys()))
    unet.load_state_dict(fixed_weights(unet))
    seen: list[torch.Tensor] = []

    class Recorder(nn.Module):
        def forward(self, imgs: torch.Tensor) -> types.SimpleNamespace:
            seen.append(imgs.detach().clone())
            return types.SimpleNamespace(logits=imgs.mean((2, 3)))

    robust = drm.DiffusionRobustModel.__new__(drm.DiffusionRobustModel)
    nn.Module.__init__(robust)
    robust.model, robust.diffusion, robust.classifier = unet.eval(), diffusion, Recorder()
    noise = drm_noise()
    cuda, randn_like = torch.Tensor.cuda, torch.randn_like
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.randn_like = lambda x, *a, **k: noise.clone()
    denoised: list[torch.Tensor] = []
    wrapped = robust.denoise
    robust.denoise = lambda x, t: denoised.append(wrapped(x, t)) or denoised[-1]
    try:
        with torch.no_grad():
            robust(drm_image(), t)
    finally:
        torch.Tensor.cuda, torch.randn_like = cuda, randn_like
    fed = seen[0].flatten()
    step = len(fed) // CLASSIFIER_PROBES
    return {"sigma": DRM_SIGMA, "t": t, "denoised": rounded(denoised[0]),
            "clipped_fraction": float((denoised[0].abs() >= 1).float().mean()),
            "classifier_input_shape": list(seen[0].shape), "probe_step": step,
            "classifier_input_probes": rounded(fed[::step][:CLASSIFIER_PROBES])}


def blackvip(root: Path) -> dict:
    """BlackVIP's Coordinator (backbone vit-mae-base) built by their code, with
    facebook/vit-mae-base's name redirected to a small ViTMAEModel saved with
    transformers' ViTMAEConfig defaults (layer_norm_eps 1e-12, as the hub's config.json):
    the feature z their forward returns, and the same with eps 1e-6 (timm's)."""
    import tempfile

    import transformers
    from safetensors.torch import save_file
    from transformers import ViTForImageClassification  # noqa: F401  (loaded before the stub below)

    sys.path.insert(0, str(root))
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))  # imported, not used here
    # imported by their module, not used here; gone in transformers 5
    sys.modules["transformers"].ViTFeatureExtractor = transformers.ViTImageProcessor
    prompters = importlib.import_module("trainers.visual_prompters")
    state = mae_weights(timm_mae().state_dict())
    out = {}
    for label, eps in (("hf", None), ("timm_eps", 1e-6)):
        config = transformers.ViTMAEConfig(**MAE, mask_ratio=0.0)
        if eps is not None:
            config.layer_norm_eps = eps
        # the hub file's layout: a ViTMAEForPreTraining checkpoint, keys under "vit."
        # (transformers maps them onto its own module names when it loads them)
        folder = tempfile.mkdtemp()
        config.save_pretrained(folder)
        save_file({f"vit.{k}": v for k, v in timm_to_hf(state).items()}, f"{folder}/model.safetensors",
                  metadata={"format": "pt"})
        loader = transformers.ViTForImageClassification.from_pretrained.__func__

        def redirected(cls, name, *args, folder=folder, loader=loader, **kwargs):
            assert name == "facebook/vit-mae-base", name
            return loader(cls, folder, *args, **kwargs)

        prompters.ViTForImageClassification.from_pretrained = classmethod(redirected)
        args = types.SimpleNamespace(TRAINER=types.SimpleNamespace(BLACKVIP=types.SimpleNamespace(
            PT_BACKBONE="vit-mae-base", SRC_DIM=1568)))
        coordinator = prompters.Coordinator(args).eval()
        loaded = loader(transformers.ViTForImageClassification, folder, output_loading_info=True)[1]
        assert not loaded["unexpected_keys"], loaded  # every weight of the file is used
        assert set(loaded["missing_keys"]) <= {"classifier.weight", "classifier.bias"}, loaded
        assert coordinator.enc_pt.config.layer_norm_eps == (eps or 1e-12)
        with torch.no_grad():
            _, z = coordinator(mae_input())
        out[label] = {"layer_norm_eps": coordinator.enc_pt.config.layer_norm_eps,
                      "feature": rounded(z)}
        prompters.ViTForImageClassification.from_pretrained = classmethod(loader)
    diff = (torch.tensor(out["hf"]["feature"]) - torch.tensor(out["timm_eps"]["feature"])).abs().max()
    out["max_diff_between_eps"] = float(diff)
    sys.path.remove(str(root))
    return out


def main(dds: str, blackvip_root: str) -> None:
    torch.set_num_threads(1)
    result = {"carlini": carlini(Path(dds)), "blackvip": blackvip(Path(blackvip_root)),
              "settings": {"drm_unet": {**SETTINGS[CIFAR][1], **SMALL[CIFAR]}, "mae": MAE}}
    path = Path(__file__).with_suffix(".json")
    path.write_text(json.dumps(result) + "\n")
    drm = result["carlini"]["drm_cifar10"]
    print(f"t*: {result['carlini']['cifar10']} {result['carlini']['imagenet']}")
    print(f"DRM: t {drm['t']}, clipped {drm['clipped_fraction']:.2f}; MAE eps diff "
          f"{result['blackvip']['max_diff_between_eps']:.3g} -> {path}")


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""Write the state-dict keys and shapes of the released diffusion checkpoints, as the
authors' own unet.py builds them, into tests/data/diffusion_keys.json.

Their code is not part of pefts: check it out outside the repository and point this
script at it, e.g.

    git clone https://github.com/openai/guided-diffusion /tmp/gd
    git clone https://github.com/openai/improved-diffusion /tmp/id
    python tests/data/diffusion_keys.py /tmp/gd /tmp/id

The released models are built on the meta device (no memory, no weights) with the
settings of Carlini et al.'s DRM.py (ethz-spylab/diffusion_denoised_smoothing), which are
those the checkpoints were trained with; small models of the same code paths are run
on fixed weights and inputs, and 64 of their output values kept as a reference.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import torch

# Carlini et al.'s Args (imagenet/DRM.py and cifar10/DRM.py), model part only
SETTINGS = {
    "guided-diffusion-256-uncond": ("guided_diffusion", dict(
        image_size=256, num_channels=256, num_res_blocks=2, channel_mult="", learn_sigma=True,
        class_cond=False, use_checkpoint=False, attention_resolutions="32,16,8", num_heads=4,
        num_head_channels=64, num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0,
        resblock_updown=True, use_fp16=False, use_new_attention_order=False)),
    "improved-diffusion-cifar10-uncond": ("improved_diffusion", dict(
        image_size=32, num_channels=128, num_res_blocks=3, learn_sigma=True, class_cond=False,
        use_checkpoint=False, attention_resolutions="16,8", num_heads=4, num_heads_upsample=-1,
        use_scale_shift_norm=True, dropout=0.3)),
}


# small networks of each kind (the same code paths at a fraction of the size), run once
# on fixed weights and inputs: a few of their output values are the reference for ours
SMALL = {
    "guided-diffusion-256-uncond": dict(SETTINGS["guided-diffusion-256-uncond"][1],
                                        num_channels=32, num_head_channels=16,
                                        channel_mult="1,1,2,2,4,4", image_size=64),
    "improved-diffusion-cifar10-uncond": dict(SETTINGS["improved-diffusion-cifar10-uncond"][1],
                                              num_channels=32, num_res_blocks=1),
}
SMALL_INPUT = {"guided-diffusion-256-uncond": 64, "improved-diffusion-cifar10-uncond": 32}
TIMESTEPS = [10.25, 300.0]
PROBES = 64  # output values kept, evenly spaced over the flattened output


def hashed(n: int, seed: int) -> torch.Tensor:
    """n numbers in [-1, 1) that need no random generator (the fractional part of a
    scaled sine): the same on every machine and torch version, and of full rank as
    matrices, unlike a plain sine."""
    i = torch.arange(n, dtype=torch.float64) + 1000.0 * seed
    return (2 * torch.frac((torch.sin(i * 12.9898 + 78.233) * 43758.5453).abs()) - 1).float()


def fixed_weights(model: torch.nn.Module) -> dict:
    """Deterministic weights, 0.05 times ``hashed``, larger on q, k, v so that attention
    is far from uniform (where it is uniform the head split would not show)."""
    return {k: (0.3 if ".qkv." in k else 0.05) * hashed(v.numel(), i).reshape(v.shape)
            for i, (k, v) in enumerate(model.state_dict().items())}


def fixed_input(side: int) -> torch.Tensor:
    return hashed(2 * 3 * side * side, -1).reshape(2, 3, side, side)


def reference_output(package: str, kwargs: dict, side: int) -> list[float]:
    create_model = importlib.import_module(f"{package}.script_util").create_model
    model = create_model(**kwargs).eval()
    model.load_state_dict(fixed_weights(model))
    with torch.no_grad():
        out = model(fixed_input(side), torch.tensor(TIMESTEPS)).flatten()
    return out[:: len(out) // PROBES][:PROBES].tolist()


def keys(package: str, kwargs: dict) -> dict:
    create_model = importlib.import_module(f"{package}.script_util").create_model
    with torch.device("meta"):
        model = create_model(**kwargs)
    state = model.state_dict()
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "keys": {k: list(v.shape) for k, v in state.items()}}


def main(guided: str, improved: str) -> None:
    sys.path[:0] = [guided, improved]
    out = {name: keys(package, kwargs) for name, (package, kwargs) in SETTINGS.items()}
    for name, (package, _) in SETTINGS.items():
        out[name]["small_output"] = reference_output(package, SMALL[name], SMALL_INPUT[name])
    path = Path(__file__).with_suffix(".json")
    # one tensor a line, so a change to the list reads as a small diff
    lines = ["{"]
    for i, (name, entry) in enumerate(out.items()):
        lines += [f"{json.dumps(name)}: {{\"parameters\": {entry['parameters']},",
                  f"\"small_output\": {json.dumps(entry['small_output'])},", "\"keys\": {"]
        lines += [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in entry["keys"].items()]
        lines[-1] = lines[-1].rstrip(",")
        lines += ["}}" + ("," if i < len(out) - 1 else "")]
    path.write_text("\n".join([*lines, "}"]) + "\n")
    for name, entry in out.items():
        print(f"{name}: {entry['parameters']:,} parameters, {len(entry['keys'])} tensors -> {path}")


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""Write the state-dict keys and shapes of the released diffusion checkpoints, as the
authors' own unet.py builds them, into tests/data/diffusion_keys.json.

Their code is not part of pefts: check it out outside the repository and point this
script at it, e.g.

    git clone https://github.com/openai/guided-diffusion /tmp/gd
    git clone https://github.com/openai/improved-diffusion /tmp/id
    python tests/data/diffusion_keys.py /tmp/gd /tmp/id

The models are built on the meta device (no memory, no weights) with the settings of
Carlini et al.'s DRM.py (ethz-spylab/diffusion_denoised_smoothing), which are those the
checkpoints were trained with.
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
    path = Path(__file__).with_suffix(".json")
    # one tensor a line, so a change to the list reads as a small diff
    lines = ["{"]
    for i, (name, entry) in enumerate(out.items()):
        lines += [f"{json.dumps(name)}: {{\"parameters\": {entry['parameters']}, \"keys\": {{"]
        lines += [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in entry["keys"].items()]
        lines[-1] = lines[-1].rstrip(",")
        lines += ["}}" + ("," if i < len(out) - 1 else "")]
    path.write_text("\n".join([*lines, "}"]) + "\n")
    for name, entry in out.items():
        print(f"{name}: {entry['parameters']:,} parameters, {len(entry['keys'])} tensors -> {path}")


if __name__ == "__main__":
    main(*sys.argv[1:3])

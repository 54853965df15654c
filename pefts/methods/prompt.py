"""Visual prompt tuning, deep variant (VPT-deep, Jia et al. 2022) for timm ViTs.

timm has no prompt support, so a wrapper re-runs the ViT's forward from its own
submodules and splices learnable tokens into the sequence in front of every block.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pefts.errors import PeftsError
from pefts.hparams import Float, Int
from pefts.methods.base import Method, freeze, unfreeze_head
from pefts.models.classifier import PixelClassifier

# what the re-implemented forward uses; anything lacking them is not a timm ViT
_VIT_PARTS = ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm",
              "forward_head", "num_prefix_tokens", "embed_dim")


class PromptedViT(nn.Module):
    """A timm VisionTransformer with ``length`` learnable tokens per block.

    The sequence is [prefix (class/register) tokens, prompts, patches]. Prompts get no
    position embedding, and each block's prompt outputs are discarded and replaced by
    the next block's own prompts. They are cut out again before the final norm, so
    pooling and the head see exactly the tokens of the base model.
    """

    def __init__(self, net: nn.Module, length: int, dropout: float):
        super().__init__()
        missing = [part for part in _VIT_PARTS if not hasattr(net, part)]
        if missing:
            raise PeftsError(f"prompt tuning needs a timm VisionTransformer; "
                             f"{type(net).__name__} lacks {missing}")
        if length < 1:
            raise PeftsError(f"prompt length must be at least 1, got {length}")
        self.net = net
        self.length = length
        depth, dim = len(net.blocks), net.embed_dim
        ref = next(net.parameters())
        # VPT's Xavier-style bound, as if each prompt were a patch projected to dim
        patch_pixels = math.prod(net.patch_embed.patch_size)
        bound = math.sqrt(6.0 / (3 * patch_pixels + dim))
        prompts = torch.empty(depth, length, dim, device=ref.device, dtype=ref.dtype)
        self.prompts = nn.Parameter(prompts.uniform_(-bound, bound))
        self.prompt_dropout = nn.Dropout(dropout)

    def get_classifier(self) -> nn.Module:
        return self.net.get_classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net, n = self.net, self.net.num_prefix_tokens
        x = net.patch_embed(x)
        x = net._pos_embed(x)
        x = net.patch_drop(x)
        x = net.norm_pre(x)
        for i, block in enumerate(net.blocks):
            # expand before dropout so every sample draws its own mask
            prompts = self.prompt_dropout(self.prompts[i].expand(x.shape[0], -1, -1))
            skip = n if i == 0 else n + self.length  # drop the previous block's prompts
            x = block(torch.cat([x[:, :n], prompts, x[:, skip:]], dim=1))
        x = torch.cat([x[:, :n], x[:, n + self.length:]], dim=1)
        x = net.norm(x)
        return net.forward_head(x)


class VisualPromptDeep(Method):
    name = "prompt"
    defaults = {"length": 100, "dropout": 0.1}
    specs = {"length": Int(1), "dropout": Float(0, 1, high_open=True)}

    def build(self, base: PixelClassifier) -> nn.Module:
        freeze(base)
        unfreeze_head(base)
        length, dropout = int(self.hparams["length"]), float(self.hparams["dropout"])
        base.net = PromptedViT(base.net, length, dropout)
        return base

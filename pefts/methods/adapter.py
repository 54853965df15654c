"""Houlsby adapters: a bottleneck MLP in series after the attention and after the MLP
of every transformer block (Houlsby et al. 2019).

Each adapter is inserted by wrapping ``block.attn`` and ``block.mlp``, so the timm
Block's own forward (norms, layer scale, drop path, residuals) runs unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pefts.errors import PeftsError
from pefts.hparams import BOOL, Int
from pefts.methods.base import Method, freeze, unfreeze_head
from pefts.models.classifier import PixelClassifier


class Bottleneck(nn.Module):
    """x + up(gelu(down(x))); up starts at zero so a fresh adapter is the identity."""

    def __init__(self, dim: int, bottleneck: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class WithAdapter(nn.Module):
    """Runs ``module`` and then an adapter on its output; extra arguments (timm passes
    attn_mask and is_causal to attention) go to ``module`` untouched."""

    def __init__(self, module: nn.Module, adapter: Bottleneck):
        super().__init__()
        self.module = module
        self.adapter = adapter

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.adapter(self.module(x, *args, **kwargs))


def add_adapters(net: nn.Module, bottleneck: int) -> nn.Module:
    """Wrap every block's attention and MLP with an adapter, in place."""
    if not hasattr(net, "blocks") or not hasattr(net, "embed_dim"):
        raise PeftsError(f"adapters need a timm VisionTransformer; got {type(net).__name__}")
    if bottleneck < 1:
        raise PeftsError(f"adapter bottleneck must be at least 1, got {bottleneck}")
    ref = next(net.parameters())
    for block in net.blocks:
        for attr in ("attn", "mlp"):
            adapter = Bottleneck(net.embed_dim, bottleneck, device=ref.device, dtype=ref.dtype)
            setattr(block, attr, WithAdapter(getattr(block, attr), adapter))
    return net


class Adapter(Method):
    name = "adapter"
    # Houlsby et al. also train every layer norm; off by default so the parameter count
    # stays comparable with the paper's adapter row (see README)
    defaults = {"bottleneck": 64, "train_norms": False}
    specs = {"bottleneck": Int(1), "train_norms": BOOL}

    def build(self, base: PixelClassifier) -> nn.Module:
        freeze(base)
        add_adapters(base.net, int(self.hparams["bottleneck"]))
        if self.hparams["train_norms"]:
            for module in base.net.modules():
                if isinstance(module, nn.LayerNorm):
                    for p in module.parameters():
                        p.requires_grad_(True)
        unfreeze_head(base)
        return base

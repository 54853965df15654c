"""LoRA on the query and value projections only, through peft.

timm fuses q, k and v into one Linear, and peft cannot target slices of a Linear, so
each fused qkv is first split into three Linears that reproduce its output exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from pefts.hparams import Float, Int
from pefts.methods.base import Method, freeze, unfreeze_head
from pefts.models.classifier import PixelClassifier

# blocks only: a bare "proj"/"q" pattern would also catch the patch embedding
TARGETS = r".*blocks\.\d+\.attn\.qkv\.(q|v)"


class SplitQKV(nn.Module):
    """Separate q, k, v Linears whose concatenated output equals the fused qkv's
    (timm orders the fused rows q, k, v)."""

    def __init__(self, fused: nn.Linear):
        super().__init__()
        dim_in, dim_out = fused.in_features, fused.out_features // 3
        bias = fused.bias is not None
        self.q, self.k, self.v = (nn.Linear(dim_in, dim_out, bias=bias) for _ in range(3))
        with torch.no_grad():
            for i, part in enumerate((self.q, self.k, self.v)):
                part.weight.copy_(fused.weight[i * dim_out:(i + 1) * dim_out])
                if bias:
                    part.bias.copy_(fused.bias[i * dim_out:(i + 1) * dim_out])
        self.to(fused.weight.device, fused.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def split_qkv(net: nn.Module) -> nn.Module:
    """Replace every block's fused attention qkv Linear by a SplitQKV, in place."""
    for block in net.blocks:
        if isinstance(block.attn.qkv, nn.Linear):
            block.attn.qkv = SplitQKV(block.attn.qkv)
    return net


class LoRA(Method):
    name = "lora"
    defaults = {"rank": 2, "alpha": 2, "dropout": 0.0}
    specs = {"rank": Int(1), "alpha": Float(0, low_open=True), "dropout": Float(0, 1, high_open=True)}

    def build(self, base: PixelClassifier) -> nn.Module:
        freeze(base)
        split_qkv(base.net)
        from peft import LoraConfig, inject_adapter_in_model  # 1.4 s: only jobs that inject LoRA

        config = LoraConfig(r=int(self.hparams["rank"]), lora_alpha=self.hparams["alpha"],
                            lora_dropout=self.hparams["dropout"], target_modules=TARGETS,
                            bias="none")
        inject_adapter_in_model(config, base.net)
        unfreeze_head(base)
        return base

"""Shared fixtures: prepared digits data and a tiny, quickly trained base classifier."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pefts.data import prepare
from pefts.runs import finetune, train_base

TINY_SPEC = {
    "arch": "vit_tiny_patch16_224",
    "input_size": 8,
    "model_kwargs": {"img_size": 8, "patch_size": 2, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
}


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare("digits", out, seed=0)
    return out / "manifest.json"


@pytest.fixture(scope="session")
def tiny_base(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "base.safetensors"
    train_base(digits, out, TINY_SPEC, {"epochs": 2, "batch_size": 128, "lr": 3e-3},
               pretrained=False, pretrained_file=None, device="cpu")
    return out


@pytest.fixture(scope="session")
def none_model(digits, tiny_base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("none") / "model.safetensors"
    finetune(digits, tiny_base, out, "none", 0.5, {}, {}, device="cpu")
    return out


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run `pefts ARGS...` in-process through the real entry point; returns (code, out, err)."""
    from pefts.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["pefts", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run

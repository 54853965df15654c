"""The study as data: every fine-tuning run of every experiment, where its inputs and
outputs live, and which (run, sigma) pairs each table and figure needs.

Kept free of torch imports: the Snakefile builds its DAG from this on every call.
A run is a method with its hyper-parameters on one (data, base classifier) setup;
runs are named, and the name is the folder of its outputs, so experiments that need
the same run share it instead of training it twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Run:
    method: str
    setup: str = "main"  # which data and base classifier (see Study.setups)
    hparams: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


def sigma_label(sigma: float) -> str:
    """The sigma as written in paths and run tables: 0.5, not 0.50 or 5e-01."""
    return f"{float(sigma):g}"


class Study:
    """Paths and grids of one configuration."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.results = config["results"].rstrip("/")
        self.sigmas = [sigma_label(s) for s in config["sigmas"]]
        self.runs = self._runs()

    # --- paths ---------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return "/".join([self.results, *parts])

    def setups(self) -> dict[str, dict[str, str]]:
        """Data manifest and base classifier of each setup."""
        tb = self.path("twobirds")
        return {
            "main": {"data": self.path("data", "manifest.json"),
                     "base": self.path("base", "model.safetensors")},
            # one round: PEFTSmoothing straight from the source-task classifier
            "oneround": {"data": f"{tb}/data_target/manifest.json",
                         "base": f"{tb}/base_source/model.safetensors"},
            # two rounds: first adapted to the target task on clean data
            "tworound": {"data": f"{tb}/data_target/manifest.json",
                         "base": f"{tb}/base_target/model.safetensors"},
        }

    def data(self, run: str) -> str:
        return self.setups()[self.runs[run].setup]["data"]

    def base(self, run: str) -> str:
        return self.setups()[self.runs[run].setup]["base"]

    def model(self, run: str = "{runname}", sigma: str = "{sigma}") -> str:
        return self.path("finetune", run, f"sigma{sigma}", "model.safetensors")

    def certified(self, run: str = "{runname}", sigma: str = "{sigma}") -> str:
        return self.path("certify", run, f"sigma{sigma}", "certified.tsv")

    # --- runs and grids ------------------------------------------------------------------

    def method_params(self, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
        params = self.config["method_params"].get(method, {})
        return dict(params.get("hparams", {})), dict(params.get("train", {}))

    def _runs(self) -> dict[str, Run]:
        exp = self.config["experiments"]
        runs: dict[str, Run] = {}

        def add(name: str, method: str, setup: str = "main", **overrides: Any) -> None:
            hparams, train = self.method_params(method)
            runs[name] = Run(method, setup, {**hparams, **overrides}, train)

        for method in {*self.config["methods"], *exp["noise_learning"]["methods"]}:
            add(method, method)
        for method in exp["twobirds"]["methods"]:
            add(f"oneround_{method}", method, "oneround")
            add(f"tworound_{method}", method, "tworound")
        ablation = exp["ablation"]
        for length in ablation["prompt_length"]:
            add(f"prompt_length{length}", "prompt", length=length)
        for rank in ablation["lora_rank"]:
            # alpha follows the rank, so the ablation changes capacity, not the update scale
            add(f"lora_rank{rank}", "lora", rank=rank, alpha=rank)
        return runs

    def main_grid(self) -> list[tuple[str, str]]:
        return [(m, s) for m in self.config["methods"] for s in self.sigmas]

    def twobirds_grid(self) -> list[tuple[str, str]]:
        tb = self.config["experiments"]["twobirds"]
        sigmas = [sigma_label(s) for s in tb["sigmas"]]
        return [(f"{rounds}_{m}", s) for rounds in ("oneround", "tworound")
                for m in tb["methods"] for s in sigmas]

    def ablation_grid(self, kind: str) -> list[tuple[str, str]]:
        """kind: prompt_length or lora_rank."""
        ablation = self.config["experiments"]["ablation"]
        return [(f"{kind}{value}", sigma_label(ablation["sigma"])) for value in ablation[kind]]

    def noise_grid(self) -> list[tuple[str, str]]:
        nl = self.config["experiments"]["noise_learning"]
        return [(m, sigma_label(s)) for m in nl["methods"] for s in nl["sigmas"]]

    def run_args(self, grid: list[tuple[str, str]], files: list[str]) -> str:
        """--run LABEL SIGMA FILE for each grid point, in grid order."""
        return " ".join(f"--run {r} {s} {f}" for (r, s), f in zip(grid, files, strict=True))

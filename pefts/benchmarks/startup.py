"""`pefts benchmark-startup`: what a certification job spends before its first certified
sample, per method, split into its parts, each method in a fresh process (what a job
pays: interpreter, imports, files, model, compilation).

The parent writes a random-weight base and, per method, a random-weight model as
`pefts finetune` saves it (with random stand-ins for the external weights a method
reads: the black box's CLIP and encoder, the diffusion UNet), then starts one child per
(method, start). The child takes the path `pefts certify` takes (``load_model``, then
``executed``, then the smoothing sampler) and times it by phase:

* imports: from the parent's clock before the process starts to the end of the imports
  certify makes (interpreter start included);
* hash: sha256 of every file the job verifies (model, base, external weights);
* read: safetensors files read into memory;
* build: the rest of ``load_model`` (networks built, weights copied in, method wrapped,
  and the libraries a method imports when it is built: peft for LoRA, open_clip);
* merge: LoRA folded into its base weights (zero for other methods or paths);
* compile: torch.compile's wrapping and a compiled path's first batch less its second
  (Dynamo's trace, Inductor's code generation or its cache);
* first batch: one batch of noisy samples of one image through the executed network.

and, apart from the total to the first sample (which `pefts plan` reads), ``exit``: what
the process takes to end once its work is done, paid by every job all the same (the
`pefts` executable freezes its heap first: pefts.runtime.startup).

Two starts per row, side by side: ``cold`` is the first job of a run on a fresh node
(no digest sidecar, an empty compile cache), ``warm`` a later shard of the same run (the
sidecars and the run's compile cache the first job left). The file's pages in the OS
cache are warm in both: a cold disk read on a cluster filesystem comes on top.

Free of torch at import time: the child's imports are part of what it measures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pefts.errors import PeftsError

PHASES = ("imports", "hash", "read", "build", "merge", "compile", "first_batch")
STARTS = ("cold", "warm")
COLUMNS = ("method", "path", "start", *(f"{p}_s" for p in PHASES), "other_s", "total_s", "exit_s")
NUM_CLASSES = 10
SIGMA = 0.25  # a pass costs the same at any noise level
CHILD_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Case:
    """One row: a method on the path a job takes (precision, merge, compile)."""

    method: str
    hparams: dict[str, Any]
    precision: str = "fp32"
    merge_lora: bool = False
    compile_net: bool = False

    @property
    def path(self) -> str:
        parts = [self.precision]
        if self.merge_lora and self.method == "lora":
            parts.append("merged")
        if self.compile_net:
            parts.append("compiled")
        return ", ".join(parts)


@dataclass(frozen=True)
class Subject:
    """The base network every case wraps, and the images a job certifies."""

    arch: str
    input_size: int
    image_size: int
    model_kwargs: dict[str, Any]
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def spec(self) -> dict[str, Any]:
        return {"arch": self.arch, "num_classes": NUM_CLASSES, "input_size": self.input_size,
                "model_kwargs": dict(self.model_kwargs), "mean": list(self.mean),
                "std": list(self.std)}


def preset_cases(config: dict[str, Any], methods: list[str] | None,
                 compiled: list[str]) -> tuple[Subject, list[Case], int]:
    """The preset's base, one case per method on the preset's certification path (plus
    a compiled case for each method in ``compiled``), and the preset's batch."""
    base, certify = config["base"], config.get("certify", {})
    image_size = int(config.get("dataset", {}).get("image_size") or 32)
    subject = Subject(base["arch"].split(".")[0], int(base["input_size"]), image_size,
                      dict(base.get("model_kwargs") or {}), tuple(base.get("mean", (0.5,) * 3)),
                      tuple(base.get("std", (0.5,) * 3)))
    chosen = methods or list(config["methods"])
    unknown = [m for m in [*chosen, *compiled] if m not in config["methods"]]
    if unknown:
        raise PeftsError(f"--methods/--compile: {', '.join(unknown)} not in the preset's methods "
                         f"({', '.join(config['methods'])})")
    def case(method: str, compile_net: bool) -> Case:
        hparams = dict((config.get("method_params", {}).get(method) or {}).get("hparams") or {})
        return Case(method, hparams, precision=certify.get("precision", "fp32"),
                    merge_lora=bool(certify.get("merge_lora")) and method == "lora",
                    compile_net=compile_net)

    # the compiled cases last: on a CPU a compilation takes minutes
    cases = [case(m, False) for m in chosen] + [case(m, True) for m in dict.fromkeys(compiled)]
    return subject, cases, int(certify.get("batch", 500))


# ---------------------------------------------------------------------------- files


def stand_ins(method: str, hparams: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Random-weight local files for the external weights ``method`` reads (nothing is
    fetched; a pass costs the same whatever the weights): the hyper-parameters to use."""
    import torch
    from safetensors.torch import save_file

    def saved(name: str, net: torch.nn.Module) -> str:
        file = folder / f"{name}.safetensors"
        if not file.exists():
            torch.manual_seed(0)
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(file))
        return str(file)

    hparams = dict(hparams)
    if method == "blackbox":
        import timm

        from pefts.models.blackbox.clip import bare_model

        if hparams.get("query") == "clip" and not hparams.get("clip_file"):
            arch = hparams.get("clip_arch", "ViT-B-16")
            hparams["clip_file"] = saved(f"clip-{arch}", bare_model(arch))
            hparams.pop("clip_pretrained", None)
        encoder = hparams.get("encoder", "conv")
        if encoder != "conv" and not hparams.get("encoder_file"):
            hparams["encoder_file"] = saved(
                f"encoder-{encoder}", timm.create_model(encoder, pretrained=False, num_classes=0))
    if method == "diffusion" and hparams.get("release") and not hparams.get("weights"):
        from pefts.models.diffusion.loading import load_release

        hparams["weights"] = saved(f"unet-{hparams['release']}",
                                   load_release(None, hparams["release"])[0])
    return hparams


def write_models(subject: Subject, cases: list[Case], folder: Path) -> dict[str, tuple[str, str]]:
    """A random-weight base and, per method, a model saved as `pefts finetune` saves it
    (the method's trained parts at their initial values): method -> (model, base)."""
    import torch

    from pefts.methods import build_model, get_method
    from pefts.models.classifier import BaseSpec, build_classifier, load_base
    from pefts.runtime.artifacts import save_artifact
    from pefts.runtime.verified import recorded_weights, sha256

    folder.mkdir(parents=True, exist_ok=True)
    classes = [str(c) for c in range(NUM_CLASSES)]
    base_file = folder / "base.safetensors"
    spec = BaseSpec(**subject.spec())
    # a folder of an earlier run keeps its models (random weights all the same), unless
    # its base is of another network
    kept = base_file.with_suffix(".json")
    if not (kept.is_file() and json.loads(kept.read_text()).get("spec") == spec.to_dict()):
        for old in folder.glob("*.safetensors"):
            old.unlink()
        torch.manual_seed(0)
        save_artifact(base_file, build_classifier(spec).state_dict(),
                      {"kind": "base", "spec": spec.to_dict(), "classes": classes})
    files = {}
    for case in cases:
        out = folder / f"{case.method}.safetensors"
        if case.method in files:
            continue
        method = get_method(case.method, **stand_ins(case.method, case.hparams, folder))
        kept = out.with_suffix(".json")
        if out.is_file() and kept.is_file() \
                and json.loads(kept.read_text()).get("hparams") == method.hparams:
            files[case.method] = (str(out), str(base_file))  # written by an earlier run
            continue
        torch.manual_seed(0)
        model = build_model(method, load_base(base_file), classes, classes)
        denoiser = getattr(model, "denoiser", None)
        if hasattr(denoiser, "set_sigma"):  # the diffusion row: its one saved value
            denoiser.set_sigma(SIGMA)
        save_artifact(out, method.trainable_state(model), {
            "kind": "finetuned", "method": case.method, "hparams": method.hparams,
            "sigma": SIGMA, "classes": classes, "class_names": classes,
            "num_classes": NUM_CLASSES, "base": str(base_file), "base_sha256": sha256(base_file),
            "external_sha256": recorded_weights(method.hparams)})
        files[case.method] = (str(out), str(base_file))
    return files


def verified_files(model: str, base: str) -> list[Path]:
    """Every file a job of ``model`` hashes: the model, its base, its external weights."""
    from pefts.runtime.artifacts import load_meta
    from pefts.runtime.verified import weight_paths

    meta = load_meta(model)
    return [Path(model), Path(base), *map(Path, weight_paths(meta["hparams"]).values())]


def forget_digests(files: list[Path]) -> None:
    """A cold start: no digest sidecar from an earlier job (pefts.runtime.verified)."""
    from pefts.runtime.verified import sidecar_path

    for file in files:
        targets = [p for p in file.rglob("*") if p.is_file()] if file.is_dir() else [file]
        for target in targets:
            sidecar_path(target).unlink(missing_ok=True)


# ---------------------------------------------------------------------------- the job


def run_child(job: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    job = {**job, "t0": time.time()}
    code = "import sys; from pefts.cli.startup_child import child; child(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(job)], env=env,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    ended = time.time()
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PeftsError(f"start-up of {job['case']['method']} failed: {tail}")
    return {**json.loads(lines[-1]), "ended": ended}


def measure(subject: Subject, cases: list[Case], folder: Path, batch: int,
            threads: int | None = None, device: str = "cpu",
            measured: Callable[[Any], None] | None = None) -> Any:
    """One row per (case, start): the phases in seconds, side by side cold and warm;
    ``measured`` gets the table so far after each row (nothing measured is lost when a
    long run is stopped)."""
    import pandas as pd

    files = write_models(subject, cases, folder)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))}
    rows = []
    for case in cases:
        model, base = files[case.method]
        cache = folder / f"compile-cache-{case.method}"
        shutil.rmtree(cache, ignore_errors=True)
        forget_digests(verified_files(model, base))
        for start in STARTS:
            job = {"model": model, "base": base, "case": vars(case), "batch": batch,
                   "image_size": subject.image_size, "threads": threads,
                   "compile_cache": str(cache), "device": device}
            result = run_child(job, env)
            phases = result["phases"]
            rows.append({"method": case.method, "path": case.path, "start": start,
                         **{f"{p}_s": phases[p] for p in PHASES},
                         "other_s": max(0.0, result["total"] - sum(phases.values())),
                         "total_s": result["total"],
                         "exit_s": max(0.0, result["ended"] - result["printed"])})
            if measured is not None:
                measured(pd.DataFrame(rows, columns=list(COLUMNS)))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def to_markdown(table: Any) -> str:
    return table.to_markdown(index=False, floatfmt=".2f") + "\n"


def summary(table: Any) -> str:
    """The cut, per path: warm over cold totals, and where the cold seconds go."""
    lines = []
    for (method, path), rows in table.groupby(["method", "path"], sort=False):
        if len(rows) < len(STARTS):
            continue
        cold, warm = (rows.set_index("start").loc[s] for s in STARTS)
        biggest = max(PHASES, key=lambda p: cold[f"{p}_s"])
        lines.append(f"{method} ({path}): {cold['total_s']:.1f} s cold, {warm['total_s']:.1f} s "
                     f"warm ({cold['total_s'] - warm['total_s']:+.1f} s saved by the digest "
                     f"sidecars and the compile cache); most of it {biggest} "
                     f"({cold[f'{biggest}_s']:.1f} s)")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ what plan reads


def read_startup(path: str | Path) -> dict[tuple[str, str], float]:
    """Seconds to the first certified sample by (method, start) from a TSV this benchmark
    wrote with --out (the first row of a method: its preset path)."""
    import pandas as pd

    try:
        table = pd.read_csv(path, sep="\t")
    except (OSError, ValueError) as err:
        raise PeftsError(f"start-up measurements {path} cannot be read: {err}") from None
    missing = {"method", "start", "total_s"} - set(table.columns)
    if missing:
        raise PeftsError(f"start-up measurements {path} lack columns {', '.join(sorted(missing))}")
    seconds = pd.to_numeric(table["total_s"], errors="coerce")
    bad = ~(seconds.notna() & (seconds >= 0) & (seconds < float("inf")))
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise PeftsError(f"start-up measurements {path}, line {row + 2}: total_s "
                         f"{table['total_s'].iloc[row]!r} is not a number of seconds >= 0")
    found: dict[tuple[str, str], float] = {}
    for method, start, total in zip(table["method"], table["start"], seconds, strict=True):
        found.setdefault((method, start), float(total))
    return found


def job_seconds(startup: dict[tuple[str, str], float], method: str, shards: int) -> float:
    """Start-up of all ``shards`` jobs of one (run, sigma): the first cold, the rest warm."""
    if shards < 1:
        raise PeftsError(f"shards must be at least 1, got {shards}")
    if (method, "cold") not in startup:
        raise PeftsError(f"no start-up measured for method {method!r}")
    return startup[(method, "cold")] + (shards - 1) * startup[(method, "warm")]


def measured_startup(path: str | Path, methods: list[str]) -> tuple[float, str]:
    """One figure per GPU job for `pefts plan`: the mean first-job (cold) start-up of the
    config's methods measured in ``path``, and the words naming it. Cold, not warm: a
    run's later shards start faster, so this errs on the side of the bill."""
    startup = read_startup(path)
    cold = {m: startup[(m, "cold")] for m in methods if (m, "cold") in startup}
    if not cold:
        raise PeftsError(f"start-up measurements {path} hold none of the config's methods "
                         f"({', '.join(methods)})")
    seconds = sum(cold.values()) / len(cold)
    return seconds, (f"measured: mean first-job start-up of {len(cold)} of the config's "
                     f"{len(methods)} methods in {path}")

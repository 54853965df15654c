"""Bad input: one line on stderr, a non-zero exit, nothing overwritten."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def one_line_error(code: int, err: str, needle: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]


def pefts_process(*args, **kwargs) -> subprocess.CompletedProcess:
    """`pefts ARGS...` in a process of its own, as a user or a Snakemake job runs it."""
    return subprocess.run([sys.executable, "-m", "pefts", *map(str, args)], capture_output=True,
                          text=True, timeout=600, **kwargs)


def error_line(result: subprocess.CompletedProcess, needle: str) -> str:
    """A real process failed with exactly one line that starts with 'error:' and holds
    ``needle`` (split on newlines alone: a progress bar's carriage returns must not hide
    an error that shares its line), and no traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.split("\n") if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error:") and needle in errors[0], repr(errors[0])
    return errors[0]


@pytest.fixture
def certify_args(digits, tiny_base, none_model, tmp_path):
    return {"--model": none_model, "--base": tiny_base, "--data": digits, "--sigma": "0.5",
            "--n0": "8", "--n": "16", "--max": "2", "--out": tmp_path / "out.tsv", "--device": "cpu"}


def flat(options: dict) -> list[str]:
    return [str(v) for pair in options.items() for v in pair]


@pytest.mark.parametrize("change, needle", [
    ({"--sigma": "0"}, "--sigma"),
    ({"--sigma": "-1"}, "--sigma"),
    ({"--alpha": "1.5"}, "--alpha"),
    ({"--alpha": "0"}, "--alpha"),
    ({"--n": "0"}, "--n"),
    ({"--n0": "0"}, "--n0"),
    ({"--shard": "2/2"}, "shard"),
    ({"--shard": "x"}, "shard"),
    ({"--model": "missing.safetensors"}, "does not exist"),
    ({"--data": "missing.json"}, "does not exist"),
])
def test_certify_refuses_bad_input(run_cli, certify_args, change, needle):
    code, _, err = run_cli("certify", *flat({**certify_args, **change}))
    one_line_error(code, err, needle)
    assert not certify_args["--out"].exists()


def test_corrupt_weights_are_refused(run_cli, certify_args, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors at all")
    (tmp_path / "bad.json").write_text(certify_args["--model"].with_suffix(".json").read_text())
    code, _, err = run_cli("certify", *flat({**certify_args, "--model": bad}))
    one_line_error(code, err, "corrupt")


def test_unknown_method_and_dataset(run_cli, digits, tiny_base, tmp_path):
    out = tmp_path / "m.safetensors"
    code, _, err = run_cli("finetune", "--data", digits, "--base", tiny_base, "--method", "magic",
                           "--sigma", "0.5", "--out", out, "--device", "cpu")
    one_line_error(code, err, "unknown method 'magic'")
    assert not out.exists()
    code, _, err = run_cli("prepare", "--dataset", "mnist", "--out", tmp_path / "d")
    one_line_error(code, err, "unknown dataset 'mnist'")
    code, _, err = run_cli("finetune", "--data", digits, "--base", tiny_base, "--method", "lora",
                           "--sigma", "0.5", "--hparams", '{"rank": 2, "colour": 1}', "--out", out)
    one_line_error(code, err, "colour")


def test_existing_output_is_not_overwritten(run_cli, digits, tiny_base, tmp_path):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")
    code, _, err = run_cli("finetune", "--data", digits, "--base", tiny_base, "--method", "none",
                           "--sigma", "0.5", "--out", out, "--device", "cpu")
    one_line_error(code, err, "already exists")
    assert out.read_bytes() == b"precious"


def test_missing_cifar_root_names_the_config_key(run_cli, tmp_path):
    code, _, err = run_cli("prepare", "--dataset", "cifar10", "--root", tmp_path / "nothing",
                           "--out", tmp_path / "d")
    one_line_error(code, err, "dataset.root")


def test_console_script_exits_nonzero_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pefts", "certify", "--sigma", "0"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_command_has_help(run_cli):
    from pefts.cli import cli

    for name in cli.commands:
        code, out, _ = run_cli(name, "--help")
        assert code == 0 and "Usage" in out


# --- values a user types, refused in a process of its own --------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["prepare", "--dataset", "imagefolder", "--out", "{tmp}/d", "--images", '{"crop": "8"}'],
     "image option crop must be a finite int >= 1 (or null), got '8'"),
    (["prepare", "--dataset", "digits", "--out", "{tmp}/d", "--images", '{"crpo": 8}'],
     "unknown image option crpo (did you mean 'crop'?)"),
    (["certify", "--alpha", "1e-320"], "'--alpha': 1e-320 underflows"),
    (["certify", "--sigma", "2.5e-310"], "'--sigma': 2.5e-310 underflows"),
    # each mode checks its own n: fixed n samples --n, and --n-max is adaptive's alone
    (["certify", "--n", "5"], "--n 5 at alpha 0.001 can never certify"),
    (["certify", "--n", "5", "--n-max", "100"], "--n-max applies only with --adaptive"),
    (["certify", "--n", "1000", "--n-max", "5"], "--n-max applies only with --adaptive"),
    (["certify", "--n", "1000", "--rtol", "0.1"], "--rtol applies only with --adaptive"),
    (["certify", "--adaptive", "--n", "1000", "--n-max", "5"], "--n-max 5 at alpha 0.001 can never"),
])
def test_values_typed_on_the_command_line_are_refused(tmp_path, args, needle):
    if args[0] == "certify":
        args = [*args, "--model", "m.safetensors", "--base", "b", "--data", "d", "--out",
                "{tmp}/o.tsv", *([] if "--sigma" in args else ["--sigma", "0.5"])]
    result = pefts_process(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    error_line(result, needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n, n_max", [("1000", None), ("5", "100")])
def test_each_mode_passes_the_check_of_its_own_n(run_cli, n, n_max):
    """Fixed --n 1000 and adaptive --n 5 --n-max 100 can certify: they reach the files."""
    adaptive = ["--adaptive", "--n-max", n_max] if n_max else []
    code, _, err = run_cli("certify", "--model", "m.safetensors", "--base", "b", "--data", "d",
                           "--sigma", "0.5", "--n", n, *adaptive, "--out", "o.tsv")
    one_line_error(code, err, "does not exist")


def test_an_unknown_method_gets_the_closest_name(digits, tiny_base, tmp_path):
    result = pefts_process("finetune", "--data", digits, "--base", tiny_base, "--method", "adaptor",
                           "--sigma", "0.5", "--out", tmp_path / "m.safetensors")
    error_line(result, "unknown method 'adaptor' (did you mean 'adapter'?)")
    assert list(tmp_path.iterdir()) == []


def test_an_error_starts_its_own_line_while_a_progress_bar_draws(tmp_path):
    """A training image that stopped decoding after `prepare` fails the first batch, with
    the step bar drawn on stderr (a Snakemake log): the error must not be glued to it."""
    from pefts.data import prepare
    from tests.conftest import TINY_SPEC
    from tests.realsize import image_folder

    root = image_folder(tmp_path / "images", 2, 2, [0, 1])
    prepare("imagefolder", tmp_path / "data", root=str(root), images={"crop": 8})
    for image in (root / "train").rglob("*.png"):
        image.write_bytes(b"no longer an image")
    result = pefts_process("train-base", "--data", tmp_path / "data" / "manifest.json",
                           "--arch", TINY_SPEC["arch"], "--input-size", "8", "--model-kwargs",
                           json.dumps(TINY_SPEC["model_kwargs"]), "--out",
                           tmp_path / "base.safetensors", "--device", "cpu")
    assert "step/s]" in result.stderr  # the bar was drawing
    error_line(result, "cannot identify image file")
    assert not (tmp_path / "base.safetensors").exists()

"""Bad input: one line on stderr, a non-zero exit, nothing overwritten."""

from __future__ import annotations

import subprocess
import sys

import pytest


def one_line_error(code: int, err: str, needle: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]


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

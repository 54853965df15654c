"""The README stays short and every `snakemake`/`pefts` command in it works as written.

Each `snakemake` command (code blocks and inline code) is dry-run from the repository
root: its targets, config files, profiles and options must build a DAG. Each `pefts`
command's subcommand and options must exist. The commands that need data or installs
(the main job itself, the own-images example up to the prepared data, the DDPM save
recipe) are also run for real by tests/test_workflow.py, tests/test_imagefolder.py and
tests/test_baselines_diffusion.py.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_workflow import snakemake

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def commands(tool: str) -> list[str]:
    """Every command starting with ``tool`` in the README's indented blocks and inline code."""
    blocks = [line.strip() for line in README.splitlines() if line.startswith("    ")]
    inline = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", README)]
    found = []
    for text in blocks + inline:
        for part in text.split("&&"):
            part = part.strip()
            if part.startswith(tool + " "):
                found.append(part)
    return list(dict.fromkeys(found))


def test_readme_is_short_and_has_no_placeholders():
    assert len(README.encode()) <= 16_000, len(README.encode())
    assert not re.search(r"TBD|TODO|XXX|DEFAULT_|QUICK_TIME", README)


def test_readme_finds_its_commands():
    # the two install commands, the presets, the cluster, own images, rerun and docs
    assert len(commands("snakemake")) >= 8 and commands("pytest")


def test_the_quick_tier_marker_exists():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for command in commands("pytest"):
        for marker in re.findall(r'-m "(?:not )?(\w+)"', command):
            assert f'"{marker}:' in pyproject, command


@pytest.mark.parametrize("command", commands("pefts"))
def test_pefts_commands_exist_with_their_options(command):
    words = shlex.split(command)
    result = subprocess.run([sys.executable, "-m", "pefts", words[1], "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for option in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
        assert option in result.stdout, (command, option)


@pytest.mark.slow
@pytest.mark.parametrize("command", commands("snakemake"))
def test_snakemake_commands_build_their_dag(command, tmp_path):
    words = shlex.split(command)[1:]
    if "my.yaml" in words:  # the README's overlay example, written as it describes it
        overlay = tmp_path / "my.yaml"
        overlay.write_text("certify: {n: 10000}\n")
        words[words.index("my.yaml")] = str(overlay)
    result = snakemake("-n", "--nolock", *words)
    assert result.returncode == 0, (command, result.stderr[-3000:] + result.stdout[-2000:])

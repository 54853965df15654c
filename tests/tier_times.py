"""Times the two test tiers from a fresh clone of the committed tree and writes what it
measured to a page (docs/measurements/test-times.md):

    python -m tests.tier_times --out-md docs/measurements/test-times.md

Each tier runs as `python -m pytest` with the project's own options (pyproject's
`-n auto`) in the current environment, against the clone's code (PYTHONPATH), so the
figures are those of the README's commands less the install. The page also counts the
tests each tier collected and the `assert` statements of the test files, so a faster
suite that lost tests or assertions shows it."""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TIERS = {"quick": ["-m", "not slow"], "whole": []}
SUMMARY = re.compile(r"=+ (?P<counts>.*?) in (?P<seconds>[\d.]+)s")
DURATION = re.compile(r"^(?P<seconds>[\d.]+)s (?P<phase>call|setup|teardown) +(?P<test>\S.*)$", re.M)
SLOWEST = 15  # the slowest tests listed per tier


def assert_count(tests: Path) -> int:
    """`assert` statements in the test files (a parametrised test's run many times)."""
    return sum(isinstance(node, ast.Assert)
               for path in sorted(tests.rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text(), str(path))))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def run_tier(clone: Path, args: list[str], log: Path) -> dict[str, Any]:
    path = os.pathsep.join(filter(None, [str(clone), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    start = time.monotonic()
    with log.open("w") as out:  # followed while it runs: tail -f
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                               "--durations=0", *args],
                              cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    wall = time.monotonic() - start
    text = log.read_text()
    found = list(SUMMARY.finditer(text))
    if not found:
        sys.exit(f"tier_times: pytest printed no summary line (exit {proc.returncode}):\n"
                 f"{text[-3000:]}")
    summary = found[-1]
    timed = list(DURATION.finditer(text))  # every test's phases, slowest first
    slowest = [f"| {m['seconds']} s | {m['phase']} | `{m['test']}` |" for m in timed[:SLOWEST]]
    seconds: dict[str, float] = {}
    for m in timed:
        seconds[m["test"]] = seconds.get(m["test"], 0.0) + float(m["seconds"])
    return {"counts": summary["counts"], "pytest": minutes(float(summary["seconds"])),
            "wall": minutes(wall), "exit": str(proc.returncode), "slowest": slowest,
            "seconds": seconds}


def write_durations(path: Path, seconds: dict[str, float]) -> None:
    """The tests of a second or more, for tests/conftest.py to deal out across workers."""
    long = {test: round(s, 1) for test, s in sorted(seconds.items()) if s >= 1.0}
    path.write_text(json.dumps(long, indent=0) + "\n")


BEGIN, END = "<!-- tier_times: begin -->", "<!-- tier_times: end -->"


def development_block(page: str) -> str:
    """The page's measurements, short, for docs/development.md."""
    lines = page.splitlines()
    written = re.search(r"on (\S+) \(commit (\w+)\)", lines[0])
    machine = next(line for line in lines if "load average" in line)
    table = [line for line in lines if line.startswith("| quick ") or line.startswith("| whole ")]
    asserts = next(line for line in lines if line.startswith("The test files hold"))
    return "\n".join([
        BEGIN,
        f"Measured on {written[1]} (commit {written[2]}) by `python -m tests.tier_times`"
        f" ([measurements/test-times.md](measurements/test-times.md)); {machine}",
        "",
        "| tier | command | pytest's count | pytest's time | wall time | exit |",
        "| --- | --- | --- | --- | --- | --- |",
        *table,
        "",
        asserts,
        END,
    ])


def update_development(path: Path, page: str) -> None:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"tier_times: {path} has no {BEGIN} ... {END} block to write")
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + development_block(page) + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-md", type=Path, help="write the page here (else print it)")
    parser.add_argument("--durations-out", type=Path,
                        help="write each long test's seconds in the whole tier here "
                             "(tests/durations.json: the workers' shares of long tests)")
    parser.add_argument("--development-md", type=Path,
                        help="also write the figures into this file's tier_times block "
                             "(docs/development.md)")
    parser.add_argument("--render-from", type=Path,
                        help="measure nothing: write --development-md's block from this page")
    parser.add_argument("--tier", choices=list(TIERS), action="append",
                        help="time only this tier (repeatable; default: both)")
    opts = parser.parse_args(argv)
    if opts.render_from:
        if not opts.development_md:
            parser.error("--render-from writes --development-md's block: name the file")
        update_development(opts.development_md, opts.render_from.read_text())
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    load = os.getloadavg()[0]
    rows, slowest = [], []
    logs = Path(tempfile.mkdtemp(prefix="pefts-tier-logs-"))
    with tempfile.TemporaryDirectory(prefix="pefts-tiers-") as tmp:
        # readable by all, as a clone in a home folder is: tests/test_devices.py runs
        # pefts as a second user
        os.chmod(tmp, 0o755)
        clone = Path(tmp) / "pefts"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        for tier in opts.tier or list(TIERS):
            command = " ".join(["pytest", *(f'"{a}"' if " " in a else a for a in TIERS[tier])])
            print(f"{tier}: {command} (output in {logs / tier}.log)", flush=True)
            result = run_tier(clone, TIERS[tier], logs / f"{tier}.log")
            rows.append(f"| {tier} | `{command}` | {result['counts']} | {result['pytest']} | "
                        f"{result['wall']} | {result['exit']} |")
            slowest += ["", f"The {SLOWEST} slowest of the {tier} tier (pytest --durations):", "",
                        "| time | phase | test |", "| --: | --- | --- |", *result["slowest"]]
            print(rows[-1], flush=True)
            if tier == "whole" and opts.durations_out:
                write_durations(opts.durations_out, result["seconds"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    page = "\n".join([
        f"Written by `python -m tests.tier_times --out-md docs/measurements/test-times.md` on"
        f" {datetime.date.today().isoformat()} (commit {commit}); rerun it to regenerate this page.",
        "",
        "# How long the tests take",
        "",
        "Each tier run from a fresh clone of the committed tree, in the current environment"
        " (the install is not counted), with the project's own pytest options (one"
        " pytest-xdist worker per core) and `--durations=0`.",
        "",
        f"{cpu_name()}, {cores} cores, load average {load:.2f} at the start; Python"
        f" {platform.python_version()}.",
        "",
        "| tier | command | pytest's count | pytest's time | wall time | exit |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"The test files hold {assert_count(ROOT / 'tests'):,} `assert` statements.",
        *slowest,
        "",
    ])
    if opts.out_md:
        opts.out_md.write_text(page)
    else:
        print(page)
    if opts.development_md:
        update_development(opts.development_md, page)


if __name__ == "__main__":
    main()

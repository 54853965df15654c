"""docs/ pages are written by the command that measured or computed what they show, so a
reader regenerates them instead of trusting a paste."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_workflow import ROOT, in_workdir, job_counts, snakemake


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_docs_page_puts_command_written_tables_under_the_prose(run_cli, tmp_path):
    head = write(tmp_path / "page.head.md", "# Title\n\nProse by hand.\n")
    first = write(tmp_path / "first.md", "| a |\n|--:|\n| 1 |\n")
    second = write(tmp_path / "second.md", "| b |\n|--:|\n| 2 |\n")
    out = tmp_path / "page.md"
    code, _, err = run_cli("docs-page", "--head", head, "--section", "First", first,
                           "--section", "Second", second, "--by", "snakemake --cores all x",
                           "--out", out)
    assert code == 0, err
    text = out.read_text()
    assert text.startswith("# Title\n\nProse by hand.\n")
    assert "written by `snakemake --cores all x`" in text
    assert text.index("## First") < text.index("| 1 |") < text.index("## Second") < text.index("| 2 |")
    assert f"`{first}`" in text and f"`{second}`" in text


@pytest.mark.parametrize("out, needle", [("table", "--out"), ("page.txt", "must end in .md")])
def test_docs_page_refuses_to_write_over_a_table_or_outside_markdown(run_cli, tmp_path, out, needle):
    head = write(tmp_path / "page.head.md", "# Title\n")
    table = write(tmp_path / "table.md", "| a |\n|--:|\n| 1 |\n")
    target = table if out == "table" else tmp_path / out
    code, _, err = run_cli("docs-page", "--head", head, "--section", "T", table, "--by", "x",
                           "--out", target)
    assert code != 0 and needle in err and "Traceback" not in err
    assert table.read_text() == "| a |\n|--:|\n| 1 |\n"


@pytest.mark.parametrize("page", ["default-run", "experiments"])
def test_committed_pages_are_their_prose_plus_tables_a_target_wrote(page):
    text = (ROOT / "docs" / f"{page}.md").read_text()
    assert text.startswith((ROOT / "docs" / f"{page}.head.md").read_text().rstrip("\n"))
    assert "were written by `snakemake --cores all docs" in text


def test_committed_default_run_shows_sound_counts_within_a_few_images_of_standard():
    text = (ROOT / "docs" / "default-run.md").read_text()
    section = text.split("## Sound mode beside the standard mode", 1)[1]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| lora")]
    header = [c.strip() for c in next(line for line in section.splitlines()
                                      if line.startswith("| method")).strip("|").split("|")]
    table = {row[header.index("mode")]: row for row in rows}
    assert set(table) == {"standard", "sound"}
    radii = [i for i, name in enumerate(header) if name.startswith("r=")]
    assert len(radii) == 5 and int(table["standard"][radii[0]]) > 0
    for i in radii:
        assert abs(int(table["sound"][i]) - int(table["standard"][i])) <= 3, header[i]


def test_measurement_pages_name_the_command_that_wrote_them():
    pages = sorted((ROOT / "docs" / "measurements").glob("*.md"))
    assert {p.name for p in pages} >= {"throughput-cpu.md", "adaptive-lora-sigma0.25.md",
                                       "adaptive-lora-sigma0.5.md"}
    for page in pages:
        first = page.read_text().splitlines()[0]
        # the one page no command here could rewrite says so in its title
        assert (first.startswith(("Written by `pefts ", "Written by `python -m tests.tier_times "))
                or "not regenerated" in first), page.name


def test_tier_times_reads_pytests_summary_and_counts_assertions(tmp_path):
    from tests.tier_times import DURATION, SUMMARY, assert_count

    line = "==== 1118 passed, 49 deselected, 3 warnings in 171.52s (0:02:51) ===="
    found = SUMMARY.search(line)
    assert found["counts"] == "1118 passed, 49 deselected, 3 warnings" and found["seconds"] == "171.52"
    slow = DURATION.search("30.25s call     tests/test_a.py::test_b[x-1]\n")
    assert (slow["seconds"], slow["phase"], slow["test"]) == ("30.25", "call", "tests/test_a.py::test_b[x-1]")
    write(tmp_path / "test_a.py",
          "def test_a():\n    assert 1\n    for i in range(3):\n        assert i < 3\n")
    write(tmp_path / "helper.py", "assert True\n")
    assert assert_count(tmp_path) == 3


def test_docs_targets_build_their_dag(tmp_path):
    result = snakemake("docs", "docs_experiments", "docs_benchmarks", "-n", "--cores", "1",
                       *in_workdir(tmp_path), "--configfile", str(ROOT / "config.yaml"),
                       "--config", f"results={tmp_path}/r")
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout)
    assert counts["docs_benchmark_adaptive"] == 2  # one page per sigma of the default
    for rule in ("docs", "docs_experiments", "docs_benchmark_throughput", "twobirds_report"):
        assert counts[rule] == 1, rule

"""tests/tier_times.py: what it writes into docs/development.md and tests/durations.json
(the measurements themselves take half an hour: `python -m tests.tier_times`)."""

from __future__ import annotations

import json

import pytest

from tests.tier_times import BEGIN, END, development_block, update_development, write_durations

PAGE = ("Written by `python -m tests.tier_times --out-md docs/measurements/test-times.md` on "
        "2026-12-07 (commit abc1234); rerun it to regenerate this page.\n") + """

# How long the tests take

CPU X, 2 cores, load average 0.10 at the start; Python 3.11.7.

| tier | command | pytest's count | pytest's time | wall time | exit |
| --- | --- | --- | --- | --- | --- |
| quick | `pytest -m "not slow"` | 1144 passed | 2 min 50 s | 2 min 58 s | 0 |
| whole | `pytest` | 1193 passed | 24 min 10 s | 24 min 20 s | 0 |

The test files hold 4,000 `assert` statements.
"""


def test_the_development_page_gets_the_figures_between_its_markers(tmp_path):
    page = tmp_path / "development.md"
    page.write_text(f"before\n\n{BEGIN}\nold figures\n{END}\n\nafter\n")
    update_development(page, PAGE)
    text = page.read_text()
    assert text.startswith("before\n\n" + BEGIN) and text.endswith(END + "\n\nafter\n")
    assert "old figures" not in text
    assert "Measured on 2026-12-07 (commit abc1234)" in text and "load average 0.10" in text
    assert "| quick | `pytest -m \"not slow\"` | 1144 passed | 2 min 50 s |" in text
    assert "| whole | `pytest` | 1193 passed | 24 min 10 s |" in text
    assert "4,000 `assert` statements" in text
    update_development(page, PAGE)  # again: the block is replaced, not added
    assert page.read_text() == text


def test_a_page_without_the_markers_is_refused(tmp_path):
    page = tmp_path / "development.md"
    page.write_text("no block here\n")
    with pytest.raises(SystemExit, match="no <!-- tier_times: begin -->"):
        update_development(page, PAGE)
    assert development_block(PAGE).startswith(BEGIN)


def test_only_the_long_tests_are_kept_for_the_workers_shares(tmp_path):
    out = tmp_path / "durations.json"
    write_durations(out, {"tests/a.py::t": 12.345, "tests/b.py::t": 0.4})
    assert json.loads(out.read_text()) == {"tests/a.py::t": 12.3}

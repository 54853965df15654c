"""The conftest's scheduling aids: the order that deals long tests out across
pytest-xdist's workers, checked against xdist's own work-stealing scheduler, and the
per-worker memo of a preset's dry run."""

from __future__ import annotations

import pytest
from xdist.scheduler.worksteal import WorkStealingScheduling

from tests.conftest import _dry_run_once, balanced


class _Config:
    """What xdist's scheduler reads of pytest's config: the workers (--tx)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def getvalue(self, name: str) -> list[str]:
        assert name == "tx"
        return [f"{self.workers}*popen"]


class _Worker:
    """A worker as the scheduler sees it: it records the tests it is sent."""

    shutting_down = False

    def __init__(self, number: int) -> None:
        self.gateway = type("Gateway", (), {"id": f"gw{number}"})
        self.queue: list[int] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.queue += indices


def first_queues(order: list[str], workers: int) -> list[list[str]]:
    """The tests xdist's work-stealing scheduler hands each worker before any finishes."""
    scheduler = WorkStealingScheduling(_Config(workers))
    nodes = [_Worker(i) for i in range(workers)]
    for node in nodes:
        scheduler.add_node(node)
    for node in nodes:
        scheduler.add_node_collection(node, order)
    scheduler.schedule()
    return [[order[i] for i in node.queue] for node in nodes]


# a whole tier in miniature: two long preset runs, shorter long tests, many quick ones,
# collected with the two presets side by side (as pytest collects them)
SECONDS = {"presets[imagenet]": 840.0, "presets[cifar]": 830.0, "slurm_limit": 350.0,
           "slurm_profile": 160.0, **{f"mid{i}": 100.0 - 7 * i for i in range(8)},
           **{f"quick{i}": 0.3 for i in range(200)}}


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_xdist_hands_each_worker_an_even_share_of_the_long_tests(workers):
    items = list(SECONDS)
    order = balanced(items, [SECONDS[name] for name in items], workers)
    assert sorted(order) == sorted(items)  # a reordering: no test lost or run twice
    queues = first_queues(order, workers)
    assert sorted(sum(queues, [])) == sorted(items)  # the whole order, handed out at once
    long = [{name for name in queue if SECONDS[name] >= 1.0} for queue in queues]
    loads = [sum(SECONDS[name] for name in names) for names in long]
    # greedy longest-first: no worker's load exceeds another's by more than one test
    assert max(loads) - min(loads) <= max(SECONDS.values())
    if workers > 1:
        # the two real-size runs never queue up on one worker
        assert not any({"presets[imagenet]", "presets[cifar]"} <= names for names in long)
        # and the spread is what dealing achieves, not the collected order's luck
        assert max(loads) - min(loads) <= 350.0
    for queue, names in zip(queues, long, strict=True):
        # each worker starts on its long tests while every worker is busy
        assert set(queue[:len(names)]) == names
        # its quick tests keep their collected order (a module's tests stay together)
        quick = queue[len(names):]
        assert quick == sorted(quick, key=items.index)


def test_with_no_durations_every_test_keeps_its_place():
    items = [f"t{i}" for i in range(9)]
    assert balanced(items, [0.3] * 9, 2) == items


def test_a_dry_run_runs_once_per_config_contents(tmp_path):
    calls = []

    def real(configfiles, target):
        calls.append((configfiles, target))
        return f"plan {len(calls)}"

    dry_run = _dry_run_once(real)
    config = tmp_path / "config.yaml"
    config.write_text("sigmas: [0.25]\n")
    first = dry_run((str(config),), "all")
    assert dry_run((str(config),), "all") == first and len(calls) == 1
    assert dry_run((str(config),), "experiments") != first  # another target
    config.write_text("sigmas: [0.5]\n")  # same path, new contents: a new dry run
    assert dry_run((str(config),), "all") not in (first,) and len(calls) == 3


def test_a_failed_dry_run_is_not_kept(tmp_path):
    outcomes = iter([ValueError("config: sigmas must be positive"), "plan"])

    def real(configfiles, target):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    dry_run = _dry_run_once(real)
    with pytest.raises(ValueError, match="sigmas"):
        dry_run(("missing.yaml",), "all")
    assert dry_run(("missing.yaml",), "all") == "plan"

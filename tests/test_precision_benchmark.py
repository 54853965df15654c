"""`pefts benchmark-precision`: bf16 against fp32 for the diffusion row, on the same
noise and against sampling error (fp32 on other noise)."""

from __future__ import annotations

import torch

from pefts.benchmarks.precision import compare_precisions
from tests.test_baselines import one_thread  # noqa: F401  (one intra-op thread: faster here)


def test_bf16_is_compared_with_fp32_on_the_same_noise_and_against_other_noise():
    result = compare_precisions(images=2, sigma=0.25, n=40, n0=10, alpha=0.001, batch=50,
                                radii=[0.0, 0.1], seed=0, device=torch.device("cpu"), flip_samples=20)
    table = result.table.set_index("measure")
    assert list(table.columns) == ["fp32", "bf16", "fp32, other noise"]
    assert list(table.index) == ["certified r=0", "certified r=0.1", "abstained", "mean nA"]
    flips, same, other = result.summary
    assert "of 40 " in flips  # every noisy copy of every image compared
    # other noise draws other votes; the same noise in fp32 twice would move nothing
    assert "nA moves by 0.00 " not in other, other
    assert all(0 <= table.loc["mean nA", c] <= 40 for c in table.columns)

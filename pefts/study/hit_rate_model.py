"""The plan's default model of hit rates, when no earlier certification is replayed.

Adaptive certification's cost depends on each image's hit rate p (the top class's share
of noisy predictions). Before a model exists nothing measures it, so the plan and the
DAG's shard counts (``certify.shards: auto``) replay a model: the hit rates of Cohen et
al.'s released paper-scale CERTIFY logs (CIFAR-10 ResNet-110 and ImageNet ResNet-50, each
certified at the sigma it was trained at; tests/data/cohen), kept here as 100 quantiles
of z = PhiInv(p) = radius / sigma per log, abstentions at z = 0 (p = 1/2, the costliest
case for the stopping rule). ``record()`` recomputes them from the logs
(tests/test_plan.py fails on any drift); replaying the quantiles gives the full logs'
samples per image within a few percent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

QUANTILES = 100
# the logs a dataset's model is taken from (any other dataset: CIFAR-10's)
LOGS = {"cifar10": "cifar10/resnet110", "imagenet": "imagenet/resnet50"}

# (log, sigma) -> z quantiles at (i + 0.5) / 100, written by record()
RECORDED: dict[tuple[str, float], tuple[float, ...]] = {
    ('cifar10/resnet110', 0.25): (
        0, 0, 0, 0, 0, 0, 0, 0, 0.004, 0.042, 0.078, 0.141,
        0.181, 0.212, 0.232, 0.253, 0.307, 0.346, 0.377, 0.417, 0.453, 0.476, 0.512, 0.545,
        0.573, 0.611, 0.653, 0.683, 0.712, 0.731, 0.762, 0.834, 0.912, 0.934, 0.981, 1.025,
        1.069, 1.116, 1.175, 1.219, 1.272, 1.288, 1.34, 1.389, 1.453, 1.48, 1.557, 1.64,
        1.656, 1.716, 1.768, 1.82, 1.868, 1.908, 1.951, 2.047, 2.087, 2.171, 2.232, 2.264,
        2.292, 2.34, 2.458, 2.478, 2.558, 2.586, 2.633, 2.693, 2.751, 2.832, 2.899, 2.922,
        2.966, 3.019, 3.069, 3.124, 3.166, 3.261, 3.361, 3.424, 3.52, 3.576, 3.68, 3.716,
        3.764, 3.82, 3.82, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912,
        3.912, 3.912, 3.912, 3.912,
    ),
    ('cifar10/resnet110', 0.5): (
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0.001, 0.014, 0.045, 0.078, 0.108, 0.136, 0.17, 0.193,
        0.207, 0.23, 0.246, 0.284, 0.3, 0.344, 0.366, 0.412, 0.433, 0.465, 0.49, 0.522,
        0.578, 0.6, 0.63, 0.668, 0.688, 0.711, 0.724, 0.749, 0.78, 0.806, 0.846, 0.876,
        0.89, 0.908, 0.936, 0.956, 0.972, 0.996, 1.069, 1.12, 1.14, 1.186, 1.212, 1.236,
        1.283, 1.322, 1.338, 1.375, 1.453, 1.489, 1.569, 1.603, 1.651, 1.684, 1.747, 1.82,
        1.863, 1.895, 1.924, 1.981, 2.035, 2.095, 2.154, 2.214, 2.254, 2.3, 2.367, 2.433,
        2.486, 2.624, 2.68, 2.72, 2.812, 2.892, 2.972, 3.04, 3.232, 3.38, 3.433, 3.6,
        3.741, 3.82, 3.92, 3.92,
    ),
    ('cifar10/resnet110', 1.0): (
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0.008, 0.023, 0.041, 0.053, 0.08, 0.087, 0.101,
        0.113, 0.129, 0.148, 0.166, 0.182, 0.206, 0.218, 0.239, 0.255, 0.268, 0.294, 0.326,
        0.344, 0.358, 0.385, 0.413, 0.451, 0.475, 0.49, 0.515, 0.53, 0.554, 0.588, 0.607,
        0.648, 0.67, 0.701, 0.732, 0.761, 0.78, 0.805, 0.816, 0.83, 0.882, 0.905, 0.936,
        0.978, 0.987, 0.999, 1.045, 1.05, 1.122, 1.157, 1.194, 1.23, 1.29, 1.32, 1.427,
        1.467, 1.549, 1.703, 1.742, 1.912, 1.992, 2.066, 2.143, 2.307, 2.39, 2.45, 2.541,
        2.791, 2.89, 3.065, 3.245,
    ),
    ('imagenet/resnet50', 0.25): (
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0.067, 0.135, 0.177,
        0.2, 0.226, 0.241, 0.319, 0.405, 0.436, 0.468, 0.508, 0.555, 0.647, 0.687, 0.752,
        0.821, 0.844, 0.875, 0.942, 0.982, 1.012, 1.043, 1.086, 1.209, 1.324, 1.462, 1.494,
        1.562, 1.62, 1.692, 1.766, 1.824, 1.856, 1.992, 2.04, 2.101, 2.147, 2.215, 2.27,
        2.386, 2.436, 2.492, 2.542, 2.635, 2.721, 2.741, 2.775, 2.859, 2.903, 3.017, 3.121,
        3.203, 3.304, 3.359, 3.384, 3.434, 3.493, 3.607, 3.652, 3.716, 3.764, 3.82, 3.874,
        3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912,
        3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912, 3.912,
        3.912, 3.912, 3.912, 3.912,
    ),
    ('imagenet/resnet50', 0.5): (
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0.004, 0.035, 0.087, 0.112, 0.184, 0.212, 0.232, 0.281,
        0.31, 0.371, 0.386, 0.438, 0.482, 0.5, 0.527, 0.553, 0.575, 0.628, 0.65, 0.679,
        0.709, 0.744, 0.792, 0.823, 0.868, 0.933, 0.998, 1.043, 1.109, 1.218, 1.3, 1.408,
        1.486, 1.532, 1.64, 1.718, 1.754, 1.82, 1.86, 1.955, 1.995, 2.118, 2.178, 2.24,
        2.316, 2.378, 2.44, 2.535, 2.577, 2.617, 2.673, 2.74, 2.836, 2.98, 3.04, 3.08,
        3.115, 3.251, 3.3, 3.36, 3.395, 3.5, 3.6, 3.66, 3.748, 3.82, 3.887, 3.92,
        3.92, 3.92, 3.92, 3.92, 3.92, 3.92, 3.92, 3.92, 3.92, 3.92, 3.92, 3.92,
        3.92, 3.92, 3.92, 3.92,
    ),
    ('imagenet/resnet50', 1.0): (
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0.018, 0.044, 0.066, 0.091, 0.095, 0.152,
        0.173, 0.194, 0.224, 0.233, 0.265, 0.313, 0.345, 0.372, 0.385, 0.418, 0.443, 0.494,
        0.552, 0.643, 0.679, 0.713, 0.749, 0.787, 0.824, 0.871, 0.9, 0.999, 1.069, 1.089,
        1.168, 1.209, 1.239, 1.277, 1.35, 1.42, 1.46, 1.498, 1.538, 1.568, 1.66, 1.698,
        1.735, 1.808, 1.868, 1.927, 1.95, 2.062, 2.127, 2.197, 2.3, 2.41, 2.477, 2.547,
        2.647, 2.722, 2.983, 3.07, 3.186, 3.286, 3.502, 3.703, 3.846, 3.91, 3.91, 3.91,
        3.91, 3.91, 3.91, 3.91,
    ),
}


def model_hit_rates(dataset: str, sigma: float) -> tuple[np.ndarray, str]:
    """Hit rates of the default model at ``sigma`` and where they come from: the log of
    the dataset's network at that sigma, or the nearest one scaled keeping each image's
    radius (z' = z s / s', as `pefts plan` scales a replay)."""
    from scipy.stats import norm

    log = LOGS.get(dataset, LOGS["cifar10"])
    have = {s: z for (name, s), z in RECORDED.items() if name == log}
    near = min(have, key=lambda s: (abs(np.log(s / sigma)), s))
    z = np.asarray(have[near]) * near / sigma
    how = f"default model: Cohen et al.'s {log} log at sigma {near:g}"
    if near != sigma:
        how += f" scaled to {sigma:g} keeping each image's radius"
    return norm.cdf(z), how


def record(root: str | Path) -> dict[tuple[str, float], tuple[float, ...]]:
    """RECORDED's entries from Cohen's logs under ``root`` (tests/data/cohen)."""
    import pandas as pd

    table = {}
    for log in LOGS.values():
        for folder in sorted(Path(root, log).glob("noise_*")):
            sigma = float(folder.name.split("_")[1])
            rows = pd.read_csv(folder / "test" / f"sigma_{folder.name.split('_')[1]}", sep="\t")
            z = np.where(rows["predict"] >= 0, rows["radius"] / sigma, 0.0)
            q = np.quantile(z, (np.arange(QUANTILES) + 0.5) / QUANTILES)
            table[log, sigma] = tuple(round(float(v), 3) for v in q)
    return table


def recorded_source(table: dict[tuple[str, float], tuple[float, ...]]) -> str:
    """``table`` as the RECORDED assignment of this module."""
    lines = ["RECORDED: dict[tuple[str, float], tuple[float, ...]] = {"]
    for (log, sigma), z in sorted(table.items()):
        lines.append(f"    ({log!r}, {sigma!r}): (")
        values = [f"{v:g}," for v in z]
        for i in range(0, len(values), 12):
            lines.append("        " + " ".join(values[i:i + 12]))
        lines.append("    ),")
    return "\n".join([*lines, "}"])

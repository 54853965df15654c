"""The process `pefts benchmark-startup` times: one job's start-up, phase by phase.

It lives with the CLI because it imports the CLI (every command module), as a job's
process does before it reads a file; pefts.benchmarks.startup starts it and reads its line.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pefts.benchmarks.startup import SIGMA


def child(argument: str) -> None:
    """One job's start-up, timed by phase; prints one JSON line. ``argument``: JSON of
    the parent's clock (``t0``), the files, the case and the sampling settings."""
    job = json.loads(argument)
    t0 = job["t0"]
    # the imports `pefts certify` makes before it reads a file, the way the `pefts`
    # executable makes them (pefts.runtime.startup)
    from pefts.runtime import startup

    startup.own_process()
    startup.import_network_stack()
    import torch

    import pefts.certification.rows  # noqa: F401
    import pefts.certification.setup  # noqa: F401
    import pefts.cli  # noqa: F401  (the entry point: every command module)
    import pefts.data  # noqa: F401
    import pefts.methods
    from pefts.certification.fastpath import compiled, executed
    from pefts.certification.smoothing import Smooth

    imports = time.time() - t0
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    spent = {"hash": 0.0, "read": 0.0}

    def timing(phase: str, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - start
        return timed

    import safetensors.torch

    import pefts.runtime.artifacts
    import pefts.runtime.verified

    pefts.runtime.verified.file_digest = timing("hash", pefts.runtime.verified.file_digest)
    pefts.runtime.artifacts.load_file = timing("read", pefts.runtime.artifacts.load_file)
    safetensors.torch.load_file = timing("read", safetensors.torch.load_file)

    start = time.perf_counter()
    device = torch.device(job.get("device", "cpu"))
    net, meta = pefts.methods.load_model(job["model"], job["base"], device)
    # what certify's settings record: the model's digest (read from the process cache)
    pefts.runtime.verified.sha256(job["model"])
    loaded = time.perf_counter() - start
    case = job["case"]
    start = time.perf_counter()
    model = executed(net, case["precision"], False, False, case["merge_lora"])
    merge = time.perf_counter() - start
    start = time.perf_counter()
    if case["compile_net"]:  # what executed(compile_net=True) adds
        model = compiled(model, job.get("compile_cache"))
    wrapping = time.perf_counter() - start
    smooth = Smooth(model, meta["num_classes"], SIGMA)
    torch.manual_seed(0)
    x = torch.rand(3, job["image_size"], job["image_size"], device=device)

    def batch() -> float:
        start = time.perf_counter()
        # the counts copied to the host: the batch has finished; the first call also runs
        # the sampler's model checks, as a job's first image does
        smooth.sample_counts(x, job["batch"], job["batch"],
                             torch.Generator(device=device).manual_seed(0)).cpu()
        return time.perf_counter() - start

    first = batch()
    compile_s = 0.0
    if case["compile_net"]:  # the second batch runs the compiled code alone
        steady = batch()
        compile_s, first = wrapping + max(0.0, first - steady), steady
        total = time.time() - t0 - steady  # a job pays one batch before its first sample
    else:
        total = time.time() - t0
    phases = {"imports": imports, "hash": spent["hash"], "read": spent["read"],
              "build": loaded - spent["hash"] - spent["read"], "merge": merge,
              "compile": compile_s, "first_batch": first}
    # the parent times the rest, the process's exit, from this line's clock
    print(json.dumps({"phases": phases, "total": total, "printed": time.time()}), flush=True)
    startup.command_over()

"""The package's folders are the pipeline's stages, and imports run one way: from the
CLI down through the stages to the shared helpers, never back up (issue 31).

Every import counts, those inside functions too: an import deferred for speed is still
a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pefts"

# the package's face: what users import and run
FACE = {"__init__", "__main__", "api", "smoothing"}
# helpers every stage shares; nothing else sits directly under pefts/
HELPERS = {"errors", "progress", "hparams", "option_types"}

# lowest first; a module may import its own folder and any lower layer, and no folder
# of its own layer (the layer's folders are independent of each other)
LAYERS: list[set[str]] = [
    {"errors", "progress"},
    {"hparams"},        # checked numbers and hyper-parameter specs
    {"option_types"},   # the click types of every option: the config check reads them too
    {"runtime"},        # devices, durable files, verified weights, provenance, artifacts
    {"models"},         # the networks: classifier wrapper, black box's CLIP and coordinator, UNet
    {"data", "training"},  # datasets and the pixel grid; the training loop, checkpoints, streams
    {"methods"},        # one file per method, behind one interface
    {"finetuning", "certification"},  # the two GPU stages: runs, and smoothing's certificates
    {"reporting"},      # tables, plots, comparisons with the paper
    {"study"},          # the config, the study's runs and shards, what it fetches and costs
    {"benchmarks"},     # the measurements the cost model and the docs read
    {"cli"},            # the jobs' commands
    {"face"},           # __init__, __main__, api, smoothing: one layer, free to import each other
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def top_of(module: str) -> str:
    """The folder (or top-level module) of ``pefts.x.y``; ``pefts`` itself is the face."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return "face" if top in FACE else top


def owner(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    top = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    return "face" if top in FACE else top


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of pefts in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "pefts"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "pefts":
            if node.module == "pefts":  # from pefts import x: x is a module or a name of the face
                found += [(node.lineno, f"pefts.{a.name}") if (PACKAGE / a.name).exists()
                          or (PACKAGE / f"{a.name}.py").exists() else (node.lineno, "pefts")
                          for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_only_the_face_and_a_few_helpers_sit_directly_under_the_package():
    flat = {p.stem for p in PACKAGE.glob("*.py")}
    assert flat == FACE | HELPERS, f"give these a stage folder: {sorted(flat - FACE - HELPERS)}"
    assert len(HELPERS) <= 5


def test_every_folder_is_a_stage_with_a_place_in_the_layers():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(RANK), f"place these folders in LAYERS: {sorted(folders - set(RANK))}"
    assert set(RANK) <= folders | {"face"} | HELPERS, sorted(set(RANK) - folders - HELPERS)
    for folder in folders:  # a reader sees what the stage does in its __init__
        assert ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())), folder


def test_no_import_runs_back_up():
    upward = []
    for path in sources():
        mine = owner(path)
        for line, module in imported_modules(path):
            theirs = top_of(module)
            if theirs == mine:
                continue
            if RANK[theirs] >= RANK[mine]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({mine}, layer "
                              f"{RANK[mine]}) imports {module} ({theirs}, layer {RANK[theirs]})")
    assert not upward, "imports that run up or across a layer:\n" + "\n".join(upward)


def test_the_checker_sees_an_import_that_runs_up(tmp_path):
    """The check above reads deferred imports and `from pefts import x` too."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from pefts import cli\n    import pefts.study.plan\n")
    assert [m for _, m in imported_modules(planted)] == ["pefts.cli", "pefts.study.plan"]
    assert top_of("pefts.cli") == "cli" and RANK["cli"] > RANK["data"]

"""The package's layers point down only: data → features → models → tasks → serving → runs → entry
points. Read from the source (every import, at the top or inside a function), so a lazy import
cannot hide a dependency on a layer above."""

from __future__ import annotations

import ast

import pytest

from helpers import ROOT

SRC = ROOT / "src" / "recfunnel"
ENTRY_POINTS = {"recfunnel.train", "recfunnel.funnel", "recfunnel.evaluate", "recfunnel.recommend",
                "recfunnel.compare", "recfunnel.significance", "recfunnel.data.prepare"}
LIBRARY = ("data", "features", "models", "tasks", "eval", "serving", "utils")
# rank of each layer: a module may import only modules of its own rank or lower
RANK = {"utils": 0, "data": 1, "features": 2, "models": 3, "tasks": 4, "serving": 5, "runs": 6}
# modules that sit elsewhere than their package: eval holds the metric core (used by data and
# tasks) and the funnel's evaluation and reports; the DataModules batch the feature pipeline's output
MODULE_RANK = {"eval.metrics": 1, "eval.protocol": 1, "eval.diversity": 1, "eval.slices": 1, "eval.funnel": 5,
               "eval.report": 5, "eval.significance": 0, "eval.per_target": 5,
               "data.datamodule": 2.5, "data.ranking": 2.5}


def module_name(path) -> str:
    return ".".join(("recfunnel", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")


def imports(path) -> set[str]:
    """Every ``recfunnel`` module a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("recfunnel")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recfunnel"):
            found.add(node.module)
            package = SRC.joinpath(*node.module.split(".")[1:])
            found |= {f"{node.module}.{a.name}" for a in node.names if (package / f"{a.name}.py").exists()}
    return found


def rank(module: str) -> float | None:
    parts = module.split(".")[1:]
    if not parts or module in ENTRY_POINTS:
        return None
    if ".".join(parts[:2]) in MODULE_RANK:
        return MODULE_RANK[".".join(parts[:2])]
    return None if parts[0] == "eval" and len(parts) > 1 else RANK.get(parts[0], 1 if parts[0] == "eval" else None)


LIBRARY_FILES = sorted(p for pkg in LIBRARY for p in (SRC / pkg).rglob("*.py"))


def test_every_library_module_has_a_layer():
    assert LIBRARY_FILES
    unknown = [module_name(p) for p in LIBRARY_FILES if rank(module_name(p)) is None and module_name(p) not in ENTRY_POINTS
               and not module_name(p).endswith(("recfunnel.data", "recfunnel.eval"))]
    assert not unknown, f"give these modules a layer in this test: {unknown}"


@pytest.mark.parametrize("path", [*LIBRARY_FILES, SRC / "runs.py"], ids=lambda p: module_name(p))
def test_library_modules_import_no_entry_point_and_no_layer_above(path):
    me = module_name(path)
    if me in ENTRY_POINTS:  # recfunnel.data.prepare is an entry point living beside its data
        return
    found = imports(path)
    assert not found & ENTRY_POINTS, f"{me} imports entry point(s) {sorted(found & ENTRY_POINTS)}"
    above = sorted(m for m in found if (r := rank(m)) is not None and rank(me) is not None and r > rank(me))
    assert not above, f"{me} (layer {rank(me)}) imports layers above it: {above}"


def test_the_import_reader_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def later():\n    from recfunnel.train import main\n    import recfunnel.funnel\n")
    assert {"recfunnel.train", "recfunnel.funnel"} <= imports(f)

"""The engine's rooms and the rules between them (DEVELOPERS.md, "Where things are").

The runtime core (engine/*.py) is what `pip install lstmgen` runs with: numpy, onnxruntime, numba
and tqdm. It imports none of the server, inspection, trainer or graph builders, nor starlette, torch
or onnx; the CLI reaches the server and inspection only inside the commands that need them. Nothing
under engine/ imports lstmgen.trainer: the trainer may use the engine, never the reverse.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "engine"
CORE = sorted(p for p in ENGINE.glob("*.py") if p.name not in ("__main__.py",))
FORBIDDEN_IN_CORE = ("lstmgen.server", "lstmgen.inspection", "lstmgen.trainer", "lstmgen.graphs", "lstmgen.bench",
                     "starlette", "uvicorn", "pydantic", "torch", "onnx")
LAZY_DOORS = {"cli.py", "inspect.py"}  # the CLI's commands, and the documented alias of lstmgen.inspection


def imported_names(path: Path, *, top_level_only: bool) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = "lstmgen" + "".join("." + p for p in path.parent.relative_to(ENGINE).parts)
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
                names |= {module} | ({f"{module}.{a.name}" for a in node.names} if not node.module else set())
            else:
                names.add(node.module or "")
    return names


def hits(names: set[str], forbidden) -> list[str]:
    return sorted(n for n in names for f in forbidden if n == f or n.startswith(f + "."))


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_the_core_imports_no_server_inspection_trainer_or_heavy_library(path):
    names = imported_names(path, top_level_only=path.name in LAZY_DOORS)
    allowed = {"lstmgen.inspection"} if path.name == "inspect.py" else set()
    assert [n for n in hits(names, FORBIDDEN_IN_CORE) if n not in allowed] == []


def test_nothing_under_engine_imports_the_trainer():
    offenders = {str(p.relative_to(ENGINE)): hits(imported_names(p, top_level_only=False), ("lstmgen.trainer",))
                 for p in ENGINE.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_the_core_loads_none_of_the_rooms_around_it():
    modules = [f"lstmgen.{p.stem}" for p in CORE if p.stem not in ("__init__", "inspect")]
    code = (f"import sys; import {', '.join(modules)}; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {{'starlette', 'uvicorn', 'pydantic', 'torch', 'onnx'}}"
            f" or m.startswith(('lstmgen.server', 'lstmgen.inspection', 'lstmgen.trainer', 'lstmgen.graphs'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_documented_import_paths_still_work():
    from lstmgen.graph_runner import GraphGenerator
    from lstmgen.inspect import Inspection, inspect_text
    from lstmgen.inspection import inspect_text as same

    assert inspect_text is same and Inspection and GraphGenerator

"""The code's habits, held by tests: the lint rules (ruff, as pyproject.toml selects them) pass, and
every function of the engine, trainer and bench reads in one sitting (at most MAX_FUNCTION_LINES)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from .conftest import REPO

MAX_FUNCTION_LINES = 60  # a function longer than this is two functions (the developers' guide)
PACKAGES = ("engine", "trainer", "bench")


def test_ruff_finds_nothing():
    ruff = pytest.importorskip("ruff", reason="needs ruff (the 'test' extra)")
    del ruff
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def long_functions(source: str, limit: int) -> list[tuple[str, int, int]]:
    """(name, first line, lines) of each function or method longer than `limit` lines."""
    return [(node.name, node.lineno, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit]


def test_the_length_check_finds_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def f():\n{body}\n", MAX_FUNCTION_LINES) == [("f", 1, MAX_FUNCTION_LINES + 1)]
    assert long_functions("def g():\n    return 1\n", MAX_FUNCTION_LINES) == []


def test_every_function_reads_in_one_sitting():
    found = [f"{path.relative_to(REPO)}:{line} {name} ({lines} lines)"
             for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
             for name, line, lines in long_functions(path.read_text(encoding="utf-8"), MAX_FUNCTION_LINES)]
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines (split them): " + "; ".join(found)

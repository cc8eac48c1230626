"""Reproducible installs: constraints.txt pins every dependency within pyproject's ranges, and every
set-up (the README's two commands, CI) installs through it."""

from __future__ import annotations

import re

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from .conftest import REPO

tomllib = pytest.importorskip("tomllib")


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt pins exact versions only, got {line!r}"
            out[name.lower().replace("_", "-")] = version
    return out


def test_constraints_pin_every_dependency_inside_pyprojects_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pinned = pins()
    for req in requirements:
        name = req.name.lower().replace("_", "-")
        assert name in pinned, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(Version(pinned[name])), f"{req.name}=={pinned[name]} is outside pyproject's {req.specifier}"


def test_every_set_up_installs_through_the_constraints():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^python3 -m venv .*$", readme, flags=re.M)
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if "pip install" in line]
    assert len(commands) == 2 and len(ci) == 2
    for line in commands + ci:
        assert "-c constraints.txt" in line, line

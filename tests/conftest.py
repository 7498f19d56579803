"""Shared test helpers: fixture paths, and bundles built once per test session."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REFS = FIXTURES / "refs"
FAMILIES = ("sd1-tiny", "sd2-tiny")


def load_cases(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """An npz written by make_fixtures.save_cases: {case: {tensor: array}}."""
    cases: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            case, name = key.split("/", 1)
            cases.setdefault(case, {})[name] = data[key]
    return cases


def run_sdc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a child process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "sdc", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """sd1-tiny and sd2-tiny built once, with the Python API (the CLI is covered separately)."""
    from sdc.compile.build import build

    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for family in FAMILIES:
        out[family] = build(FIXTURES / family, root / f"{family}.bundle").out
    return out


@pytest.fixture
def fixture_copy(tmp_path):
    """A writable copy of a fixture folder, for tests that break it."""

    def copy(family: str) -> Path:
        dst = tmp_path / family
        shutil.copytree(FIXTURES / family, dst)
        return dst

    return copy

"""Every benchmark script imports and answers ``--help``: a module moved inside ``amc`` can never again
break a benchmark silently. No benchmark work is run (``--help`` exits before any measurement)."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_"))


def test_there_are_benchmarks():
    assert "harness" in SCRIPTS and len(SCRIPTS) > 10


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_imports(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.__doc__, f"benchmarks/{name}.py says what it measures in its docstring"
    if name != "harness":
        assert callable(module.main)


@pytest.mark.parametrize("name", [n for n in SCRIPTS if n != "harness"])
def test_benchmark_help_exits_0(name):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--help"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")

"""Tests of the benchmark scripts' helpers (benchmarks/ is a folder of scripts, not a package)."""

import importlib
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def import_benchmark(name: str):
    """benchmarks/<name>.py as a module, imported as its own script would see its folder."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))

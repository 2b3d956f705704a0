"""The import graph points down only: services stand on the shared package, never on each other,
the shared package on no service, and nothing but the top layer imports the CLI / local stack.

Read from the source with `ast` (every import, also those inside functions), so a lazy import
that crosses a layer fails here just like a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from moodtunes.config import REPO_ROOT

PACKAGES = {
    "moodtunes": REPO_ROOT / "packages/moodtunes-common/moodtunes",
    "moodtunes_tfserving": REPO_ROOT / "packages/moodtunes-tfserving/moodtunes_tfserving",
    "moodtunes_cli": REPO_ROOT / "packages/moodtunes-cli/moodtunes_cli",
    "moodtunes_gateway": REPO_ROOT / "services/gateway/moodtunes_gateway",
    "moodtunes_fer": REPO_ROOT / "services/fer/moodtunes_fer",
    "moodtunes_recommender": REPO_ROOT / "services/recommender/moodtunes_recommender",
    "moodtunes_model_server": REPO_ROOT / "services/model_server/moodtunes_model_server",
    "moodtunes_fer_training": REPO_ROOT / "training/fer/moodtunes_fer_training",
}
SERVICES = {"moodtunes_gateway", "moodtunes_fer", "moodtunes_recommender", "moodtunes_model_server"}
# package -> top-level modules it must never import
FORBIDDEN = {
    "moodtunes": set(PACKAGES) - {"moodtunes"},
    "moodtunes_tfserving": set(PACKAGES) - {"moodtunes_tfserving"} | {"tensorflow", "keras"},
    "moodtunes_gateway": {
        "moodtunes_fer",
        "moodtunes_fer_training",
        "moodtunes_tfserving",
        "moodtunes_recommender",
        "moodtunes_model_server",
        "moodtunes_cli",
    },
    "moodtunes_recommender": {
        "moodtunes_fer",
        "moodtunes_fer_training",
        "moodtunes_tfserving",
        "moodtunes_gateway",
        "moodtunes_model_server",
        "moodtunes_cli",
    },
    # the slim worker: no TensorFlow, no training code, no other service
    "moodtunes_fer": {
        "tensorflow",
        "keras",
        "tensorflow_serving",
        "moodtunes_fer_training",
        "moodtunes_gateway",
        "moodtunes_recommender",
        "moodtunes_model_server",
        "moodtunes_cli",
    },
    "moodtunes_model_server": {
        "moodtunes_fer",
        "moodtunes_fer_training",
        "moodtunes_gateway",
        "moodtunes_recommender",
        "moodtunes_cli",
    },
    "moodtunes_fer_training": {"moodtunes_cli", "moodtunes_gateway", "moodtunes_recommender"},
}


def imported_modules(package_dir: Path) -> dict[str, set[str]]:
    """Top-level module names imported anywhere in the package, by file."""
    found: dict[str, set[str]] = {}
    for path in package_dir.rglob("*.py"):
        if "proto" in path.relative_to(package_dir).parts:
            continue  # generated code
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(package_dir))] = names
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down_only(package):
    crossings = {
        file: sorted(names & FORBIDDEN[package])
        for file, names in imported_modules(PACKAGES[package]).items()
        if names & FORBIDDEN[package]
    }
    assert crossings == {}, f"{package} imports what is above or beside it: {crossings}"


def test_the_checker_sees_lazy_imports(tmp_path):
    """A guard against a checker that cannot fail: an import inside a function is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "mod.py").write_text("def f():\n    from moodtunes_fer.worker import app\n")
    assert imported_modules(pkg) == {"mod.py": {"moodtunes_fer"}}

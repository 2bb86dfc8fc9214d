"""The house rules the layout depends on, held by tests: imports point one way (import-linter
contracts in pyproject.toml), every module imports on its own, and a long module says why."""

import importlib
import pkgutil
from pathlib import Path

import pytest
from importlinter import cli

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 400
REASON = "Longer than 400 lines because"


def test_import_contracts_hold():
    # The same check as `lint-imports` in `make lint`; a broken contract prints which import breaks it.
    assert cli.lint_imports(config_filename=str(REPO / "pyproject.toml")) == 0, (
        "an import breaks a contract (see above)"
    )


def _modules() -> list[str]:
    names = []
    for package in ("stream_worker", "models"):
        root = importlib.import_module(package)
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages(root.__path__, prefix=f"{package}.")]
    return sorted(n for n in names if not n.endswith("__main__"))


@pytest.mark.parametrize("module", _modules())
def test_every_module_imports_on_its_own(module):
    importlib.import_module(module)


def test_a_module_over_400_lines_says_why_in_its_docstring():
    long_without_reason = []
    for package in ("stream_worker", "models"):
        for path in sorted((REPO / package).rglob("*.py")):
            text = path.read_text()
            if text.count("\n") > MAX_LINES and REASON not in text.split('"""')[1 if text.startswith('"""') else 0]:
                long_without_reason.append(f"{path.relative_to(REPO)} ({text.count(chr(10))} lines)")
    assert not long_without_reason, (
        f"split these modules, or say in the docstring '{REASON} ...': {long_without_reason}"
    )

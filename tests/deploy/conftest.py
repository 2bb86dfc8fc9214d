"""The deployment files, checked by the tools operators use on them.

The tools are programs, not Python packages: kustomize (or `kubectl kustomize`), promtool and
prometheus (Debian's `prometheus` package) and checkov (its own virtualenv, `.venv/checks`,
made by `make install`). `.ci/run` installs them; in CI (env CI set) a missing tool fails
the test, on a developer's machine it skips it with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
OVERLAYS = ("cpu", "gpu", "strimzi")
CRDS = REPO_ROOT.parent / "shared" / "k8s-crds"


def require(tool: str, found: str | None, install: str) -> str:
    """The tool's path, or fail (in CI) / skip (elsewhere) naming how to install it."""
    if found:
        return found
    message = f"{tool} is not installed; {install}"
    if os.environ.get("CI"):
        pytest.fail(message + " (.ci/run installs it)")
    pytest.skip(message + " - CI installs it and fails instead of skipping")


def kustomize_command() -> list[str]:
    """`kustomize build`, or the kustomize built into kubectl."""
    for candidate in (shutil.which("kustomize"), str(REPO_ROOT / ".cache" / "bin" / "kustomize")):
        if candidate and os.access(candidate, os.X_OK):
            return [candidate, "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    require("kustomize", None, "run `GOBIN=$PWD/.cache/bin go install sigs.k8s.io/kustomize/kustomize/v5@v5.7.1`")
    raise AssertionError("unreachable")


def checkov_path() -> str:
    candidate = REPO_ROOT / ".venv" / "checks" / "bin" / "checkov"
    return require("checkov", str(candidate) if candidate.exists() else None, "run `make install`")


def promtool_path() -> str:
    return require("promtool", shutil.which("promtool"), "run `apt-get install prometheus`")


def prometheus_path() -> str:
    return require("prometheus", shutil.which("prometheus"), "run `apt-get install prometheus`")


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="session")
def rendered() -> dict[str, str]:
    """Each overlay rendered by kustomize, as YAML text."""
    command = kustomize_command()
    out = {}
    for overlay in OVERLAYS:
        result = run([*command, str(DEPLOY / "k8s" / "overlays" / overlay)])
        assert result.returncode == 0, f"kustomize could not render the {overlay} overlay:\n{result.stderr}"
        out[overlay] = result.stdout
    return out


@pytest.fixture(scope="session")
def resources(rendered: dict[str, str]) -> dict[str, list[dict]]:
    return {overlay: [doc for doc in yaml.safe_load_all(text) if doc] for overlay, text in rendered.items()}


@pytest.fixture(scope="session")
def find(resources: dict[str, list[dict]]) -> Callable[..., dict]:
    def find(overlay: str, kind: str, name: str) -> dict:
        matches = [r for r in resources[overlay] if r["kind"] == kind and r["metadata"]["name"] == name]
        assert len(matches) == 1, f"{overlay}: expected one {kind} {name}, found {len(matches)}"
        return matches[0]

    return find

"""The package runs outside the checkout: a wheel carries the schemas and the broker's pom.

Builds the wheel with uv (as `make install` has it), installs it with no dependencies into a
folder outside the repository and runs it from there with the test environment's interpreter,
so only the wheel's own files can be found."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    if UV is None:
        pytest.skip("uv is not installed (make install puts it in .venv)")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([UV, "build", "--wheel", "--out-dir", str(out), "-q", str(REPO)], check=True, timeout=600)
    (wheel,) = out.glob("streamrec-*.whl")
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [UV, "pip", "install", "-q", "--no-deps", "--target", str(target), "--python", sys.executable, str(wheel)],
        check=True,
        timeout=300,
    )
    return target


def run(target: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(args, cwd=target.parent, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_wheel_runs_streamrec_outside_the_checkout(installed):
    out = run(installed, str(installed / "bin" / "streamrec"), "--version")
    assert out.startswith("streamrec "), out
    where = run(installed, sys.executable, "-c", "import stream_worker; print(stream_worker.__file__)")
    assert Path(where.strip()).is_relative_to(installed), f"imported {where} instead of the wheel's copy"


def test_the_wheel_carries_schemas_and_the_broker_pom(installed):
    code = """
from stream_worker.codec import SCHEMA_DIR, SingleObjectCodec, USER_EVENT
from stream_worker.kafka.local import POM, LOG4J_CONFIG
codec = SingleObjectCodec(USER_EVENT)
record = {"event_id": "e1", "user_id": "u1", "item_id": "i9", "event_type": "CLICK", "event_time": 1700000000000}
decoded = codec.decode(codec.encode(record))
assert decoded["user_id"] == "u1" and decoded["item_id"] == "i9", decoded
print(SCHEMA_DIR, POM.is_file(), LOG4J_CONFIG.is_file())
"""
    schema_dir, pom, log4j = run(installed, sys.executable, "-c", code).split()
    assert Path(schema_dir).is_relative_to(installed) and pom == "True" and log4j == "True"

from pathlib import Path

from stream_worker.config import Settings

README = (Path(__file__).resolve().parents[3] / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme():
    for name in Settings.model_fields:
        assert f"`STREAMREC_{name.upper()}`" in README, f"STREAMREC_{name.upper()} is missing from README.md"


def test_the_readme_shows_the_commands_ci_runs():
    ci = (Path(__file__).resolve().parents[3] / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in README and "make demo" in README

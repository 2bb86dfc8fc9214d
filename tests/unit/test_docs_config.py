"""docs/configuration.md is what `python -m stream_worker.devtools.config_docs` makes from the settings."""

from __future__ import annotations

from stream_worker.config import ENV_PREFIX, OTHER_VARIABLES, Settings
from stream_worker.devtools import config_docs


def test_the_committed_configuration_page_is_the_generated_one():
    committed = config_docs.DOC.read_text()
    assert committed == config_docs.render(), (
        "docs/configuration.md is out of date with stream_worker/config.py: run `make docs`"
    )


def test_every_setting_has_a_row_with_its_description():
    page = config_docs.render()
    rows = {line.split("|")[1].strip(" `"): line for line in page.splitlines() if line.startswith(f"| `{ENV_PREFIX}")}
    assert len(rows) == len(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        row = rows[f"{ENV_PREFIX}{name.upper()}"]
        assert field.description and field.description.replace("|", "\\|") in row, name
    for variable in OTHER_VARIABLES:
        assert f"`{variable}`" in page


def test_check_fails_with_one_sentence_when_the_page_is_stale(tmp_path, capsys):
    page = tmp_path / "configuration.md"
    assert config_docs.main(["--out", str(page)]) == 0
    assert config_docs.main(["--check", "--out", str(page)]) == 0
    page.write_text(page.read_text().replace("Kafka bootstrap servers", "Kafka servers"))
    assert config_docs.main(["--check", "--out", str(page)]) == 1
    message = capsys.readouterr().err.strip()
    assert "out of date" in message and message.count("\n") == 0

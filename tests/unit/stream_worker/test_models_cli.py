"""`streamrec models`: a user mistake is one sentence, never a traceback."""

from typer.testing import CliRunner

from stream_worker.cli.app import app

runner = CliRunner()


def test_models_commands_name_the_problem_in_one_sentence(tmp_path):
    missing = runner.invoke(app, ["models", "list", "--model-dir", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "No model directory" in missing.output and "Traceback" not in missing.output
    (tmp_path / "models").mkdir()
    nothing = runner.invoke(app, ["models", "rollback", "--model-dir", str(tmp_path / "models")])
    assert nothing.exit_code == 2 and "nothing to roll back" in nothing.output
    unknown = runner.invoke(app, ["models", "promote", "9", "--model-dir", str(tmp_path / "models")])
    assert unknown.exit_code == 2 and "no complete version 9" in unknown.output

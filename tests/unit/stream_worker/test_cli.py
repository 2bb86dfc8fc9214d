from typer.testing import CliRunner

from stream_worker.cli.app import app

runner = CliRunner()


def test_a_bad_setting_stops_start_up_with_one_sentence(monkeypatch):
    monkeypatch.setenv("STREAMREC_TOP_K", "0")
    result = runner.invoke(app, ["worker", "--model", "anywhere"])
    assert result.exit_code == 2
    assert "STREAMREC_TOP_K" in result.output and "Traceback" not in result.output


def test_a_missing_model_stops_start_up_with_what_to_do(tmp_path):
    result = runner.invoke(app, ["worker", "--model", str(tmp_path / "nothing-here")])
    assert result.exit_code == 2
    assert "holds no checkpoint" in result.output and "streamrec train" in result.output


def test_train_needs_exactly_one_source(tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "exactly one of --ratings PATH or --from-topic" in result.output


def test_exceptions_carry_their_exit_code_and_sentence():
    from models.data import RatingsFileError
    from stream_worker.cli.common import RUNTIME, USAGE, explain
    from stream_worker.kafka.check import KafkaConfigError, KafkaUnavailable

    sentence = "ratings.csv: line 3 has 2 columns"
    assert explain(RatingsFileError(sentence)) == (sentence, USAGE)
    assert explain(KafkaConfigError("unknown property x")) == ("unknown property x", USAGE)  # a subclass decides
    assert explain(KafkaUnavailable("no broker at h:1"))[1] == RUNTIME
    message, code = explain(KeyError("k"))
    assert code == RUNTIME and "--verbose" in message


def test_next_item_evaluation_mistakes_are_one_sentence(tmp_path):
    result = runner.invoke(app, ["evaluate", "--protocol", "next-item"])
    assert result.exit_code == 2 and "needs --interactions FILE" in result.output
    result = runner.invoke(app, ["evaluate", "--protocol", "chrono-loo", "--negatives", "100"])
    assert result.exit_code == 2 and "belong to --protocol next-item" in result.output
    (tmp_path / "words.txt").write_text("user item\nalice book\n")
    result = runner.invoke(app, ["evaluate", "--protocol", "next-item", "--interactions", str(tmp_path / "words.txt")])
    from stream_worker.cli.common import USAGE, explain

    message, code = explain(result.exception)  # what `streamrec` prints, and its exit code
    assert code == USAGE and "words.txt: every field must be a number" in message

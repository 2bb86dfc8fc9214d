"""The alert rules, checked and unit-tested by promtool (deploy/prometheus/tests.yaml) as shipped."""

from __future__ import annotations

import importlib.util
import os

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO_ROOT, promtool_path, run

RULE = DEPLOY / "prometheus" / "prometheusrule.yaml"
TESTS = DEPLOY / "prometheus" / "tests.yaml"
TEST_RULES = DEPLOY / "prometheus" / "tests.rules.yaml"  # written by make_test_rules.py


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULE.read_text())["spec"]["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_full_rules(tmp_path):
    promtool = promtool_path()
    spec = yaml.safe_load(RULE.read_text())["spec"]
    (tmp_path / "full.rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    checked = run([promtool, "check", "rules", str(tmp_path / "full.rules.yaml")])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_the_shipped_test_rules_are_what_the_generator_makes_from_the_prometheus_rule():
    spec = importlib.util.spec_from_file_location("make_test_rules", DEPLOY / "prometheus" / "make_test_rules.py")
    assert spec and spec.loader
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert TEST_RULES.read_text() == generator.render(RULE.read_text()), (
        "deploy/prometheus/tests.rules.yaml is out of date: run `python deploy/prometheus/make_test_rules.py`"
    )
    assert yaml.safe_load(TESTS.read_text())["rule_files"] == [TEST_RULES.name]


@pytest.mark.parametrize("cwd", [REPO_ROOT, DEPLOY / "prometheus"], ids=["from the repository root", "from the folder"])
def test_every_promtool_unit_test_passes_on_the_files_as_shipped(cwd):
    promtool = promtool_path()
    tested = run([promtool, "test", "rules", os.path.relpath(TESTS, cwd)], cwd=cwd)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_unit_test_that_makes_it_fire():
    fired = {
        case["alertname"]
        for test in yaml.safe_load(TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    assert set(names) == fired, f"alerts without a firing unit test: {set(names) - fired}"


def test_every_alert_says_what_happened_and_what_to_do():
    for rule in alerts():
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert annotations["runbook"].rstrip().endswith((".", ")")) and len(annotations["runbook"]) > 60, rule["alert"]


def test_the_required_alerts_exist():
    names = {rule["alert"] for rule in alerts()}
    assert {
        "StreamrecWorkerDown",
        "StreamrecConsumerLagGrowing",
        "StreamrecLatencyAboveSLO",
        "StreamrecDeadLetters",
        "StreamrecModelStale",
        "StreamrecModelLoadFailures",
        "StreamrecModelUpdatesRejected",
        "StreamrecStateRestoreTooSlow",
    } <= names

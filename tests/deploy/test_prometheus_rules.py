"""The alert rules, checked and unit-tested by promtool (deploy/prometheus/tests.yaml)."""

from __future__ import annotations

import shutil

import yaml

from tests.deploy.conftest import DEPLOY, promtool_path, run

RULE = DEPLOY / "prometheus" / "prometheusrule.yaml"
TESTS = DEPLOY / "prometheus" / "tests.yaml"


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULE.read_text())["spec"]["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules_and_every_unit_test_passes(tmp_path):
    promtool = promtool_path()
    spec = yaml.safe_load(RULE.read_text())["spec"]
    (tmp_path / "full.rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    checked = run([promtool, "check", "rules", str(tmp_path / "full.rules.yaml")])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout

    # The unit tests compare each firing alert's labels and its templated summary; the static
    # description and runbook sentences are checked below instead of being repeated there.
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule["annotations"] = {"summary": rule["annotations"]["summary"]}
    (tmp_path / "streamrec.rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(TESTS, tmp_path / "tests.yaml")
    tested = run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path)
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

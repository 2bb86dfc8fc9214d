"""Write tests.rules.yaml, the rules file that `promtool test rules tests.yaml` reads, from the
PrometheusRule: `python deploy/prometheus/make_test_rules.py` (from anywhere; needs PyYAML).

It is the PrometheusRule's `spec` (a plain Prometheus rules file) with each alert's annotations cut
to its `summary`: promtool compares every annotation of a firing alert, and the unit tests check
the templated summary; the static description and runbook sentences are checked by
tests/deploy/test_prometheus_rules.py instead of being repeated in tests.yaml. For a Prometheus
without the operator, use the whole spec: `yq .spec prometheusrule.yaml > streamrec.rules.yaml`.
tests/deploy/test_prometheus_rules.py fails when the shipped file differs from what this makes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "prometheusrule.yaml"
TARGET = HERE / "tests.rules.yaml"
HEADER = "# Generated from prometheusrule.yaml by make_test_rules.py for tests.yaml; do not edit.\n"


def render(prometheus_rule: str) -> str:
    """The rules file for promtool's unit tests, from the PrometheusRule manifest's text."""
    spec = yaml.safe_load(prometheus_rule)["spec"]
    for group in spec["groups"]:
        for rule in group["rules"]:
            if "annotations" in rule:
                rule["annotations"] = {"summary": rule["annotations"]["summary"]}
    return HEADER + yaml.safe_dump(spec, sort_keys=False, width=120)


if __name__ == "__main__":
    TARGET.write_text(render(SOURCE.read_text()))
    print(f"wrote {TARGET}", file=sys.stderr)

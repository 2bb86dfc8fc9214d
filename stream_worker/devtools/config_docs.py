"""docs/configuration.md, generated from the settings: `python -m stream_worker.devtools.config_docs`.

Every field of `stream_worker.config.Settings` becomes one row (variable, type, default,
description), grouped by the `# --- section ---` comments of the class body, so a new field lands
in its section without touching this file. `--check` exits 1 when the committed page differs from
what the settings make now (`make docs` rewrites it).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import stream_worker.config as config

# config.py stays at stream_worker/config.py wherever this module moves.
DOC = Path(config.__file__).resolve().parents[1] / "docs" / "configuration.md"

INTRO = """\
# Configuration

<!-- Generated from stream_worker/config.py by `make docs`; do not edit. -->

Every setting is an environment variable (prefix `STREAMREC_`); command-line options override them.
A bad value, or a `STREAMREC_` variable that is not a setting, stops start-up with one sentence
naming it. On Kubernetes the same variables come from the `streamrec-settings` ConfigMap
(`deploy/k8s/base/settings.env`, see [Kubernetes](operations/kubernetes.md)).

Default event weights: VIEW 1, CLICK 2, ADD_TO_CART 3, PURCHASE 5, RATING 4 × value/5, OTHER 1
(e.g. `STREAMREC_EVENT_WEIGHTS='{"PURCHASE": 10}'`). Kafka security settings go through
`STREAMREC_KAFKA_OPTIONS='{"security.protocol": "SASL_SSL", ...}'`: a JSON object of librdkafka
properties whose values are all strings (`{"linger.ms": "20"}`, not `20`), or through the file that
`STREAMREC_KAFKA_OPTIONS_FILE` names (see [Checkpoints and authenticated clusters](checkpoints-and-auth.md)).
"""

# Variables read outside Settings (config.OTHER_VARIABLES); what each is for.
OTHER_DESCRIPTIONS = {
    "STREAMREC_DATA_DIR": "Where `streamrec evaluate` and the tests find the MovieLens files "
    "(default: `../shared/data` beside the clone)",
    "STREAMREC_TEST_BOOTSTRAP_SERVERS": "Tests only: an existing Kafka cluster to run the integration tests against",
}

SECTION = re.compile(r"^\s*# -+ (?P<title>.+?) -*\s*$")
FIELD = re.compile(r"^    (?P<name>[a-z_][a-z0-9_]*)\s*:")


def sections() -> dict[str, list[str]]:
    """Field names by the section comment above them in the class body, in source order."""
    grouped: dict[str, list[str]] = {}
    title = "General"
    for line in inspect.getsource(config.Settings).splitlines():
        if match := SECTION.match(line):
            # Section comments may carry a project reference in parentheses; the page does not.
            title = re.sub(r"\s*\(.*?\)", "", match["title"]).strip()
            title = title[0].upper() + title[1:]
        elif (match := FIELD.match(line)) and match["name"] in config.Settings.model_fields:
            grouped.setdefault(title, []).append(match["name"])
    missing = [name for name in config.Settings.model_fields if not any(name in g for g in grouped.values())]
    if missing:
        grouped.setdefault("Other", []).extend(missing)
    return grouped


def type_name(annotation: Any) -> str:
    """`int`, `str or unset`, `one of "a", "b"`, `dict[str, float]` (JSON)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " or ".join(type_name(a) for a in rest) + " (may be unset)"
    if origin is dict:
        return f"JSON object of {type_name(args[1])}"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def bounds(field: Any) -> str:
    """The field's numeric limits (pydantic's ge/gt/le/lt), e.g. ` ≥ 1, ≤ 1000`."""
    words = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    found = [f"{sign} {getattr(m, key)}" for m in field.metadata for key, sign in words.items() if hasattr(m, key)]
    return (", " + ", ".join(found)) if found else ""


def default_text(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.is_required():
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`" if value else "`{}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """The whole page, as it should be committed."""
    out = [INTRO]
    for title, names in sections().items():
        out += [f"## {title}", "", "| variable | type | default | meaning |", "|---|---|---|---|"]
        for name in names:
            field = config.Settings.model_fields[name]
            variable = f"{config.ENV_PREFIX}{name.upper()}"
            kind = type_name(field.annotation) + bounds(field)
            row = [f"`{variable}`", kind, default_text(field), field.description or ""]
            out.append("| " + " | ".join(cell(text) for text in row) + " |")
        out.append("")
    out += ["## Read elsewhere", "", "Not settings of the worker or trainer, but accepted beside them:", ""]
    out += [f"- `{name}`: {OTHER_DESCRIPTIONS.get(name, '')}" for name in sorted(config.OTHER_VARIABLES)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stream_worker.devtools.config_docs", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed page is out of date")
    parser.add_argument("--out", type=Path, default=DOC, help=f"where to write (default {DOC})")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            fix = "run `python -m stream_worker.devtools.config_docs` (`make docs`) and commit the page"
            print(f"{args.out} is out of date with stream_worker/config.py; {fix}.", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The README is a front page and docs/ is behind it: links resolve, claims name their hardware,
and neither the pages nor the code's comments point at issue numbers a reader cannot see."""

from __future__ import annotations

import io
import re
import tokenize
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").rglob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
MACHINE = re.compile(r"\bthis (?:[0-9]+-core )?(?:machine|vm|host|box|computer)\b", re.IGNORECASE)
ISSUE = re.compile(r"\bissues? #?[0-9]+\b|(?<![\w&/])#[0-9]+\b", re.IGNORECASE)


def prose_lines(text: str) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: Counter[str] = Counter()
    out = set()
    for line in prose_lines(page.read_text()):
        if match := HEADING.match(line):
            base = slug(match[2])
            out.add(base if not seen[base] else f"{base}-{seen[base]}")
            seen[base] += 1
    return out


def relative_links(page: Path) -> list[str]:
    return [
        target
        for line in prose_lines(page.read_text())
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_the_slug_follows_githubs_rules():
    assert slug("Durable state and the two guarantees") == "durable-state-and-the-two-guarantees"
    assert slug("`streamrec demo`") == "streamrec-demo"
    assert slug("cfgan-ml100k: the CFGAN authors' own split (Chae et al., CIKM 2018)") == (
        "cfgan-ml100k-the-cfgan-authors-own-split-chae-et-al-cikm-2018"
    )
    assert slug("Checked in `make test`") == "checked-in-make-test"


def test_the_readme_is_a_front_page_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200, f"README.md has {len(text.splitlines())} lines; move detail into docs/"
    assert "make demo" in text and "make test" in text
    assert "make test" in (REPO / ".ci" / "run").read_text(), ".ci/run must run the README's test command"


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = {README}, [README]
    while todo:
        page = todo.pop()
        for target in relative_links(page):
            path = (page.parent / target.split("#")[0]).resolve()
            if path.suffix == ".md" and path.is_file() and path not in reached:
                reached.add(path)
                todo.append(path)
    unreached = [str(p.relative_to(REPO)) for p in PAGES if p.resolve() not in reached]
    assert not unreached, f"no chain of links from README.md reaches {unreached}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_reaches_a_file_and_its_heading(page: Path):
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not path.is_file():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no heading #{anchor} in {path.relative_to(REPO)})")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_pages_name_their_hardware_and_no_issue_numbers(page: Path):
    lines = prose_lines(page.read_text())
    machine = [line.strip() for line in lines if MACHINE.search(line)]
    assert not machine, f"{page.relative_to(REPO)}: name the hardware instead of 'this machine': {machine}"
    issues = [line.strip() for line in lines if ISSUE.search(line)]
    assert not issues, f"{page.relative_to(REPO)}: issue numbers mean nothing to a reader of the repository: {issues}"


def issue_comments() -> Counter[str]:
    found: Counter[str] = Counter()
    for package in ("stream_worker", "models"):
        for path in sorted((REPO / package).rglob("*.py")):
            tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
            for token in tokens:
                if token.type == tokenize.COMMENT:
                    text = re.sub(r"\s+", " ", re.sub(r"-{3,}", " ", token.string.lstrip("#"))).strip()
                    if ISSUE.search(text):
                        found[text] += 1
    return found


def test_code_comments_add_no_issue_numbers():
    found = issue_comments()
    assert not found, (
        f"comments in stream_worker/ or models/ cite issue numbers; say what the code does instead: {found}"
    )

"""The documentation a newcomer reads: links that resolve, and the README facts CI relies on.

Every relative link in README.md, docs/*.md, BENCHMARKS.md and bench/README.md must name a file
that exists and, when it carries a ``#fragment``, a heading in that file (GitHub's anchor rules).
The README must carry the exact test command ``.ci/run`` runs and say why each runtime dependency
is there; no document may name a path that exists only on one machine.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from procs import REPO

DOCS = sorted(
    [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "bench" / "README.md", *(REPO / "docs").glob("*.md")]
)

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# [text](target) and ![alt](target); the target may carry a "title" after a space.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text with code blocks, code spans and comments removed: links there are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", HTML_COMMENT.sub("", text)))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    text = HTML_COMMENT.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    for match in HEADING.finditer(text):
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    targets = LINK.findall(prose(path.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]


def test_the_link_parser_sees_links_and_skips_code() -> None:
    text = "[a](x.md) `[b](y.md)` ![c](img.png#top)\n```\n[d](z.md)\n```\n[e](https://example.com)"
    assert LINK.findall(prose(text)) == ["x.md", "img.png#top", "https://example.com"]
    assert slug("The `store_credential` tool") == "the-store_credential-tool"
    assert slug("The command's absolute path") == "the-commands-absolute-path"
    assert slug("Other ways to install: uvx, pipx, bundle, container") == (
        "other-ways-to-install-uvx-pipx-bundle-container"
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in relative_links(doc):
        file_part, _, fragment = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


def test_the_docs_are_reachable_from_the_readme() -> None:
    readme_links = {t.partition("#")[0] for t in relative_links(REPO / "README.md")}
    missing = [p.name for p in (REPO / "docs").glob("*.md") if f"docs/{p.name}" not in readme_links]
    assert not missing, f"README.md links none of these docs: {missing}"


def test_readme_carries_the_ci_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line for line in ci.splitlines() if line.startswith("ruff check")]
    assert len(commands) == 1, ".ci/run should run exactly one 'ruff check ... pytest' line"
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert commands[0] in readme, f"README.md must show the test command .ci/run runs: {commands[0]!r}"
    assert "bash .ci/run" in readme


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_readme_says_why_each_dependency_is_there() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    section = _section((REPO / "README.md").read_text(encoding="utf-8"), "Dependencies, and why")

    def name(spec: str) -> str:
        found = re.match(r"[A-Za-z0-9_.-]+", spec)
        assert found, spec
        return found.group(0).lower()

    missing = [name(d) for d in project["dependencies"] if f"`{name(d)}`" not in section]
    missing += [name(d) for d in project["optional-dependencies"]["test"] if name(d) not in section]
    assert not missing, f"README's 'Dependencies, and why' does not name: {missing}"


MACHINE_LOCAL = re.compile(r"(?<![\w.~])/(?:work|root|opt|srv)/|/tmp/venv|venv2\b|/home/(?!you\b)\w+")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_machine_local_paths(doc: Path) -> None:
    hits = [
        f"line {n}: {line.strip()}"
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
        if MACHINE_LOCAL.search(line)
    ]
    assert not hits, f"{doc.relative_to(REPO)} names a path of one machine: " + "; ".join(hits)


def test_readme_clone_step_uses_the_published_repository() -> None:
    """The clone URL is the one server.json publishes: when the owner changes, both change."""
    import json

    url = json.loads((REPO / "server.json").read_text(encoding="utf-8"))["repository"]["url"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    clones = re.findall(r"^git clone (\S+)", readme, re.MULTILINE)
    assert clones == [f"{url}.git"], f"README's clone step should be 'git clone {url}.git': {clones}"

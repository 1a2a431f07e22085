"""Every relative link in README.md and docs/**/*.md points at a file that exists, and every #anchor at a heading
of its target: the benchmark write-ups live in docs/benchmarks/ and the README links them and its own sections, so
a renamed heading or a moved file must not leave a dead link behind."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# [text](target) and ![alt](target); the target stops at the first space or closing parenthesis.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"`[^`]*`")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans removed (links in code are not links)."""
    lines, in_fence = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append(_CODE_SPAN.sub("", line))
    return lines


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces to hyphens, and -1, -2, ...
    appended to repeats."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose_lines(text):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def broken_links(md: Path) -> list[str]:
    """'file: target (why)' for each relative link of md that does not resolve."""
    problems = []
    for line in _prose_lines(md.read_text(encoding="utf-8")):
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
                continue
            path_part, _, anchor = target.partition("#")
            dest = (md.parent / path_part).resolve() if path_part else md
            if not dest.exists():
                problems.append(f"{md.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text(encoding="utf-8")):
                problems.append(f"{md.name}: {target} (no heading with that anchor in {dest.name})")
    return problems


def test_every_relative_link_of_the_readme_and_docs_resolves():
    problems = [p for md in _markdown_files() for p in broken_links(md)]
    assert not problems, "dead links:\n" + "\n".join(problems)


def test_the_checker_finds_dead_files_and_anchors_and_ignores_code(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Speed (2 cores)\n", encoding="utf-8")
    md = tmp_path / "page.md"
    md.write_text(
        "# Page\n\n[ok](other.md#speed-2-cores) [self](#page) [web](https://example.com/x)\n"
        "[gone](missing.md) [bad anchor](other.md#speed) [bad self](#nowhere)\n"
        "`[in code](missing_too.md)`\n```\n[fenced](missing_three.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(md) == [
        "page.md: missing.md (no such file)",
        "page.md: other.md#speed (no heading with that anchor in other.md)",
        "page.md: #nowhere (no heading with that anchor in page.md)",
    ]


def test_heading_anchors_follow_github():
    text = "# Memory (ComfyUI's model management, low-memory sampling)\n## Does it hold? (small scale)\n## Notes\n## Notes\n"
    assert heading_anchors(text) == {
        "memory-comfyuis-model-management-low-memory-sampling",
        "does-it-hold-small-scale",
        "notes",
        "notes-1",
    }

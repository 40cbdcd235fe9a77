#!/usr/bin/env python
"""Check that every relative link in README.md and docs/**/*.md resolves under ROOT (default: the repository).

A link is a Markdown inline link or image, `[text](target)`. Web and mail links are not followed. A relative target
must be a file or directory under ROOT; its `#anchor`, when the target is a Markdown file (or the link is only an
anchor), must be one of that file's headings, slugged as GitHub does. Prints each broken link with file and line;
exits 1 when there is any, 2 on bad usage.
"""
from __future__ import annotations

import pathlib
import re
import sys

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def prose_lines(path: pathlib.Path) -> list[tuple[int, str]]:
    """The file's lines outside fenced code blocks, with their numbers."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*?|__?", "", heading.lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for _number, line in prose_lines(path):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(root: pathlib.Path, path: pathlib.Path) -> list[str]:
    problems = []
    for number, line in prose_lines(path):
        for target in LINK.findall(line):
            if EXTERNAL.match(target):
                continue
            file_part, _sep, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}:{number}: {target}"
            if not resolved.is_relative_to(root.resolve()):
                problems.append(f"{where}: points outside {root}")
            elif not resolved.exists():
                problems.append(f"{where}: {file_part} does not exist")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where}: no heading #{anchor} in {resolved.relative_to(root.resolve())}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) > 2:
        sys.stderr.write("usage: check_links.py [ROOT]\n")
        return 2
    root = pathlib.Path(argv[1] if len(argv) == 2 else pathlib.Path(__file__).resolve().parent.parent)
    files = [root / "README.md"] + sorted((root / "docs").glob("**/*.md"))
    problems = [problem for path in files if path.exists() for problem in broken_links(root, path)]
    for problem in problems:
        sys.stdout.write(f"check_links: {problem}\n")
    checked = sum(1 for path in files if path.exists())
    sys.stdout.write(f"check_links: {checked} files, {len(problems)} broken links\n")
    return 1 if problems or not checked else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The docs pages behind `gradcheck explain`: docs/findings/<kind>.md and docs/fixes/<id>.md.

Pure file reading: no torch, no analyse/. The pages live in the repository's docs/ (readable on
GitHub) and ship inside the package as ``gradcheck_cli/report/docs``, a link to ../../docs whose
pages setuptools copies into the wheel (pyproject.toml, package-data).

The page format (docs/README.md, "Page format"), which every page follows exactly:

- front matter between two ``---`` lines, one ``key: value`` a line, a value being a word,
  ``true``/``false`` or a ``[a, b]`` list: ``id`` (the file's stem) always; on a finding page
  ``fixes`` (the recommendation ids it can justify) and ``measured: false`` while no check (nor
  the training watch's timeline) emits it; on a fix page ``recommended: false`` while no rule emits it;
- ``# Title``, then the summary (one paragraph);
- the sections ``## Mechanism``, ``## What gradcheck measures``, ``## Thresholds``, ``## Fix``,
  ``## References``, in that order.

Section text comes back in the catalogue's text conventions (render/explain.py lays it out):
paragraphs separated by a blank line, each prose paragraph or "- " list item on one line, and a
fenced code block as lines indented by four spaces. ``\\<`` (Markdown's escape, so that GitHub
shows ``<name>``) reads as ``<``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable

SECTIONS = ("Mechanism", "What gradcheck measures", "Thresholds", "Fix", "References")
"""The ``##`` headings of a page, in order."""


class PageError(ValueError):
    """A page that does not follow the format: a packaging bug, not a user error."""


@dataclass(frozen=True)
class Page:
    id: str
    title: str
    summary: str
    sections: tuple[tuple[str, str], ...]
    """(heading, text) for every heading of SECTIONS but References."""
    references: tuple[str, ...]
    front: tuple[tuple[str, str | bool | tuple[str, ...]], ...]
    """The front matter, in page order."""

    def section(self, heading: str) -> str:
        return dict(self.sections)[heading]

    def meta(self, key: str, default: str | bool | tuple[str, ...]) -> str | bool | tuple[str, ...]:
        return dict(self.front).get(key, default)


def pages_root() -> Traversable:
    """The folder holding findings/ and fixes/ (docs/ of the repository, or its copy in a wheel)."""
    return resources.files("gradcheck_cli.report").joinpath("docs")


def load_folder(folder: str) -> dict[str, Page]:
    """Every page of docs/<folder>/, by id, in file-name order."""
    directory = pages_root().joinpath(folder)
    if not directory.is_dir():
        raise PageError(f"the docs pages are missing: no folder {folder}/ in {pages_root()}")
    files = sorted((f for f in directory.iterdir() if f.name.endswith(".md")), key=lambda f: f.name)
    pages = [parse_page(f.read_text(encoding="utf-8"), f"{folder}/{f.name}") for f in files]
    for page, file in zip(pages, files):
        if file.name != f"{page.id}.md":
            raise PageError(f"{folder}/{file.name}: its id is '{page.id}'")
    return {page.id: page for page in pages}


def parse_page(text: str, where: str) -> Page:
    """One page; `where` names it in errors."""
    lines = text.splitlines()
    if not lines or lines[0] != "---" or "---" not in lines[1:]:
        raise PageError(f"{where}: no front matter between '---' lines")
    end = lines.index("---", 1)
    front = tuple(_front_item(line, where) for line in lines[1:end])
    if not front or front[0][0] != "id":
        raise PageError(f"{where}: the front matter must start with 'id: ...'")
    rest = lines[end + 1:]
    outside = _outside_code(rest)
    titles = [i for i, line in enumerate(rest) if outside[i] and line.startswith("# ")]
    heads = [i for i, line in enumerate(rest) if outside[i] and line.startswith("## ")]
    if len(titles) != 1 or [rest[i][3:] for i in heads] != list(SECTIONS) or titles[0] > heads[0]:
        raise PageError(f"{where}: needs one '# Title' and the sections {', '.join(SECTIONS)} in order")
    summary = _blocks(rest[titles[0] + 1:heads[0]])
    if len(summary) != 1:
        raise PageError(f"{where}: the summary is one paragraph below the title")
    bodies = [_blocks(rest[i + 1:j]) for i, j in zip(heads, [*heads[1:], len(rest)])]
    items = "\n".join(bodies[-1]).split("\n")
    if not all(bodies) or not all(item.startswith("- ") and item[2:].strip() for item in items):
        raise PageError(f"{where}: every section needs text, References a '- ' list")
    return Page(
        id=str(front[0][1]), title=rest[titles[0]][2:].strip(), summary=summary[0],
        sections=tuple((h, "\n\n".join(b)) for h, b in zip(SECTIONS[:-1], bodies[:-1])),
        references=tuple(item[2:] for item in items), front=front)


def _outside_code(lines: list[str]) -> list[bool]:
    """For each line, whether it lies outside a fenced code block (a "# comment" is no title)."""
    flags, fenced = [], False
    for line in lines:
        fence = line.startswith("```")
        flags.append(not fenced and not fence)
        fenced ^= fence
    return flags


def _front_item(line: str, where: str) -> tuple[str, str | bool | tuple[str, ...]]:
    key, sep, raw = line.partition(":")
    value = raw.strip()
    if not sep or not key.strip() or not value:
        raise PageError(f"{where}: front matter line {line!r} is not 'key: value'")
    if value.startswith("[") and value.endswith("]"):
        return key.strip(), tuple(v.strip() for v in value[1:-1].split(",") if v.strip())
    if value in ("true", "false"):
        return key.strip(), value == "true"
    return key.strip(), value


def _blocks(lines: list[str]) -> list[str]:
    """Paragraphs (blank-line separated) in the text conventions of the module docstring."""
    blocks: list[str] = []
    prose: list[str] = []
    code: list[str] | None = None
    for line in lines:
        if code is not None:
            if line.strip() == "```":
                blocks.append("\n".join("    " + c for c in code))
                code = None
            else:
                code.append(line)
        elif line.startswith("```"):
            blocks += _prose(prose)
            prose, code = [], []
        elif not line.strip():
            blocks += _prose(prose)
            prose = []
        else:
            prose.append(line)
    if code is not None:
        raise PageError("a fenced code block is not closed")
    return blocks + _prose(prose)


def _prose(lines: list[str]) -> list[str]:
    """A wrapped paragraph as one line per "- " item (or one line of prose); [] when empty."""
    items: list[str] = []
    for line in lines:
        if line.startswith("- ") or not items:
            items.append(line.replace("\\<", "<"))
        else:
            items[-1] += " " + line.strip().replace("\\<", "<")
    return ["\n".join(items)] if items else []

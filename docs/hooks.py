"""MkDocs hook: pages include the repository's markdown by section, so the site cannot drift.

A line `<!-- include: README.md#Writing handlers -->` in a page is replaced by that section of
`README.md` (path relative to the repository root): its heading line and everything up to the next
heading of the same or a higher level. `<!-- include: README.md#Writing handlers..Runtime guarantees
-->` stops at the named heading instead. The section's headings are shifted to nest under the
page's own (see `on_page_markdown`). Headings inside code fences are not headings. A file or
heading that does not exist fails the build (`mkdocs build --strict` or not), and so does a page
that names the same section twice.

`<!-- settings-table -->` is replaced by a table of every worker setting, read from
`QWorkerSettings` and from the `qworker run` parser.

Links to README anchors (`](#large-payloads)`) in included text point at the page that includes
that heading, so they work wherever the section lands.
"""

# ruff: noqa: INP001 (an MkDocs hook file, loaded by path from mkdocs.yml)
from __future__ import annotations

import argparse
import enum
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from mkdocs.exceptions import PluginError
from pydantic_core import PydanticUndefined

ROOT: Final = Path(__file__).resolve().parent.parent
DIRECTIVE: Final = re.compile(
    r"^<!-- include: (?P<file>[^#\s]+)#(?P<start>.+?)(?:\.\.(?P<stop>.+?))? -->$"
)
HEADING: Final = re.compile(r"^(?P<hashes>#{1,6}) (?P<title>.+?)\s*$")
FENCE: Final = re.compile(r"^\s*(```|~~~)")
ANCHOR_LINK: Final = re.compile(r"\]\(#(?P<slug>[a-z0-9-]+)\)")


@dataclass(frozen=True)
class Heading:
    """One markdown heading: its line index, level and title."""

    line: int
    level: int
    title: str


def slug(title: str) -> str:
    """GitHub's and Python-Markdown's anchor for a heading (for the plain titles used here)."""
    text = re.sub(r"[^\w\s-]", "", title.lower())
    return re.sub(r"\s+", "-", text.strip())


def headings(lines: list[str]) -> list[Heading]:
    """The headings of a markdown file, skipping lines inside code fences."""
    found: list[Heading] = []
    fenced = False
    for index, line in enumerate(lines):
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            found.append(Heading(index, len(match["hashes"]), match["title"]))
    return found


def section(file: str, start: str, stop: str | None) -> tuple[list[str], list[str]]:
    """The lines of `file`'s section under heading `start`, and the titles of its headings."""
    path = ROOT / file
    if not path.is_file():
        raise PluginError(f"include: {file} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    marks = headings(lines)
    first = next((h for h in marks if h.title == start), None)
    if first is None:
        raise PluginError(f"include: {file} has no heading {start!r}")
    after = [h for h in marks if h.line > first.line]
    if stop is None:
        end = next((h.line for h in after if h.level <= first.level), len(lines))
    else:
        end_mark = next((h for h in after if h.title == stop), None)
        if end_mark is None:
            raise PluginError(f"include: {file} has no heading {stop!r} after {start!r}")
        end = end_mark.line
    titles = [h.title for h in marks if first.line <= h.line < end]
    return lines[first.line : end], titles


def directives(markdown: str) -> list[re.Match[str]]:
    """The include directives of a page, in order."""
    return [m for line in markdown.splitlines() if (m := DIRECTIVE.match(line.strip()))]


_owner: dict[str, str] = {}
"""Slug of every included heading -> the page (source path) that includes it."""

_file_owner: dict[str, str] = {}
"""Repository markdown file -> the page that includes its title (its first heading)."""

FILE_LINK: Final = re.compile(r"\]\((?P<target>[^)#\s:]+)(?P<anchor>#[^)\s]*)?\)")


def on_files(files: Any, config: Any) -> Any:  # noqa: ANN401, ARG001 (MkDocs' hook signature)
    """Record which page includes which heading, for the anchor links in included text."""
    _owner.clear()
    _file_owner.clear()
    for file in files.documentation_pages():
        text = Path(file.abs_src_path).read_text(encoding="utf-8")
        for match in directives(text):
            _, titles = section(match["file"], match["start"], match["stop"])
            for title in titles:
                _owner.setdefault(slug(title), file.src_uri)
            first = headings((ROOT / match["file"]).read_text(encoding="utf-8").splitlines())
            if first and first[0].title == match["start"]:
                _file_owner.setdefault(match["file"], file.src_uri)
    return files


def _relink(text: str, source: str, page_uri: str) -> str:
    """Make the links of text included from `source` work on the page `page_uri`.

    `](#anchor)` goes to the page that includes the anchor's heading; a link to a repository file
    goes to the page that includes that file, or to a page of the site (`docs/...`). A link to any
    other file stays as it is, so the strict build reports it.
    """
    up = "../" * page_uri.count("/")

    def anchor(match: re.Match[str]) -> str:
        owner = _owner.get(match["slug"])
        if owner is None or owner == page_uri:
            return match[0]
        return f"]({up}{owner}#{match['slug']})"

    def file(match: re.Match[str]) -> str:
        target = (ROOT / source).parent / match["target"]
        try:
            relative = target.resolve().relative_to(ROOT).as_posix()
        except ValueError:
            return match[0]
        page = _file_owner.get(relative)
        if page is None and relative.startswith("docs/") and relative.endswith(".md"):
            page = relative.removeprefix("docs/")
        if page is None:
            return match[0]
        return f"]({up}{page}{match['anchor'] or ''})"

    return FILE_LINK.sub(file, ANCHOR_LINK.sub(anchor, text))


SETTINGS_TABLE: Final = "<!-- settings-table -->"


def _run_flags() -> dict[str, list[str]]:
    """Setting name -> the flags `qworker run` takes for it, read from the CLI's own parser."""
    from qworker.cli import build_parser  # noqa: PLC0415 (only the settings page needs the CLI)

    parser = build_parser(["run"])
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001 (argparse has no public walk)
    run = commands.choices["run"]
    return {action.dest: list(action.option_strings) for action in run._actions}  # noqa: SLF001


def _default(value: object) -> str:
    if value is None or value is PydanticUndefined:
        return "\u2013"
    if isinstance(value, enum.Enum):
        value = value.value
    return f"`{value}`"


def settings_table() -> str:
    """A markdown table of every worker setting: variable, flag, default and description."""
    from pydantic import AliasChoices  # noqa: PLC0415

    from qworker.settings import ENV_PREFIX, QWorkerSettings  # noqa: PLC0415

    flags = _run_flags()
    rows = ["| variable | flag of `qworker run` | default | meaning |", "| --- | --- | --- | --- |"]
    for name, info in QWorkerSettings.model_fields.items():
        alias = info.validation_alias
        names = (
            alias.choices if isinstance(alias, AliasChoices) else [f"{ENV_PREFIX}{name.upper()}"]
        )
        variables = " / ".join(f"`{choice}`" for choice in names)
        flag = " / ".join(f"`{option}`" for option in flags.get(name, [])) or "\u2013"
        meaning = (info.description or "").replace("|", "\\|")
        rows.append(f"| {variables} | {flag} | {_default(info.default)} | {meaning} |")
    return "\n".join(rows)


def nest(lines: list[str], level: int) -> list[str]:
    """`lines` with every heading shifted so that the first one is at `level` (at most 6)."""
    marks = headings(lines)
    if not marks:
        return lines
    shift = level - marks[0].level
    nested = list(lines)
    for mark in marks:
        nested[mark.line] = "#" * min(6, mark.level + shift) + " " + mark.title
    return nested


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:  # noqa: ANN401, ARG001
    """Replace each include directive with the section it names, nested under the page's heading.

    The section's heading goes one level below the page's last heading before the directive; a
    page that starts with an include takes its level 1 title from it, and the includes that follow
    go to level 2. Subheadings keep their depth below the section's heading.
    """
    out: list[str] = []
    seen: set[tuple[str, str]] = set()
    level = 1
    fenced = False
    for line in markdown.splitlines():
        match = None if fenced else DIRECTIVE.match(line.strip())
        if not fenced and line.strip() == SETTINGS_TABLE:
            out.append(settings_table())
            continue
        if match is None:
            if FENCE.match(line):
                fenced = not fenced
            elif not fenced and (heading := HEADING.match(line)):
                level = len(heading["hashes"]) + 1
            out.append(line)
            continue
        key = (match["file"], match["start"])
        if key in seen:
            raise PluginError(f"{page.file.src_uri}: includes {key[0]}#{key[1]} twice")
        seen.add(key)
        lines, _ = section(match["file"], match["start"], match["stop"])
        out.append(_relink("\n".join(nest(lines, level)), match["file"], page.file.src_uri))
        level = max(level, 2)  # a page that starts with an include takes its title from it
    return "\n".join(out) + "\n"

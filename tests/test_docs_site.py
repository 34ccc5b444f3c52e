"""The documentation site: `mkdocs build --strict` passes offline, and every nav page exists.

mkdocs is in the `dev` extra, so these tests fail (not skip) where it is missing: a site that
cannot be built is a broken gate.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import qworker

ROOT = Path(__file__).resolve().parent.parent
MKDOCS_YML = ROOT / "mkdocs.yml"

# Runs `mkdocs build` with every socket connection and name lookup refused, so the build proves
# it needs no network (fonts, analytics, social cards, remote inventories).
OFFLINE_BUILD = """
import socket, sys

def refuse(*args, **kwargs):
    raise OSError(f"the docs build tried to reach the network: {args!r}")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from mkdocs.__main__ import cli
sys.argv = ["mkdocs", *sys.argv[1:]]
cli()
"""


def _nav_pages(nav: Any) -> list[str]:
    """Every page file named in a MkDocs nav (nested sections included)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return []


def _config() -> Any:
    from mkdocs.config import load_config  # noqa: PLC0415 (fail in the test, not at collection)

    return load_config(str(MKDOCS_YML))


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("qworker_docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being defined
    spec.loader.exec_module(module)
    return module


def test_mkdocs_is_installed() -> None:
    assert importlib.util.find_spec("mkdocs") is not None, (
        "install the docs extra: pip install -e '.[docs]'"
    )
    assert importlib.util.find_spec("material") is not None
    assert importlib.util.find_spec("mkdocstrings_handlers.python") is not None


def test_every_nav_page_exists() -> None:
    config = _config()
    docs_dir = Path(config.docs_dir)
    pages = _nav_pages(config.nav)
    assert "architecture.md" in pages
    missing = [page for page in pages if not (docs_dir / page).is_file()]
    assert missing == []
    orphans = sorted(
        str(path.relative_to(docs_dir))
        for path in docs_dir.rglob("*.md")
        if str(path.relative_to(docs_dir)) not in pages
    )
    assert orphans == []


def test_every_include_names_an_existing_section() -> None:
    hooks = _hooks()
    for page in (ROOT / "docs").glob("*.md"):
        for match in hooks.directives(page.read_text(encoding="utf-8")):
            lines, _ = hooks.section(match["file"], match["start"], match["stop"])
            assert lines, f"{page.name}: {match[0]} is empty"
        for snippet in re.findall(
            r'^--8<-- "([^"]+)"$', page.read_text(encoding="utf-8"), re.MULTILINE
        ):
            assert (ROOT / snippet).is_file(), f"{page.name}: {snippet} does not exist"


def test_every_readme_section_is_on_the_site() -> None:
    hooks = _hooks()
    included: set[str] = set()
    for page in (ROOT / "docs").glob("*.md"):
        for match in hooks.directives(page.read_text(encoding="utf-8")):
            if match["file"] == "README.md":
                included.update(hooks.section("README.md", match["start"], match["stop"])[1])
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    sections = {h.title for h in hooks.headings(readme) if h.level <= 3}
    assert sections - included == set()


def test_a_missing_section_fails_the_build() -> None:
    from mkdocs.exceptions import PluginError  # noqa: PLC0415 (mkdocs is only needed here)

    hooks = _hooks()
    with pytest.raises(PluginError, match="has no heading 'No such heading'"):
        hooks.section("README.md", "No such heading", None)
    with pytest.raises(PluginError, match="does not exist"):
        hooks.section("NO-SUCH-FILE.md", "Settings", None)


def test_section_stops_at_the_next_heading_of_its_level_outside_code_fences() -> None:
    hooks = _hooks()
    lines, titles = hooks.section("README.md", "Writing handlers", "Runtime guarantees")
    assert lines[0] == "## Writing handlers"
    assert "What happens to each message" in titles
    assert "Runtime guarantees" not in titles
    # `# handlers/orders.py` inside the example's code fence is not a heading.
    assert "handlers/orders.py" not in titles
    assert any(line.startswith("# handlers/orders.py") for line in lines)


def test_included_sections_nest_under_the_page_heading() -> None:
    hooks = _hooks()
    page = types.SimpleNamespace(file=types.SimpleNamespace(src_uri="judge.md"))
    first = hooks.on_page_markdown(
        "<!-- include: README.md#The canary judge -->\n\ntext\n\n"
        "<!-- include: bench/JUDGE.md#Canary judge: measured -->\n",
        page=page,
        config=None,
        files=None,
    )
    assert first.startswith("# The canary judge\n")  # `### ` in the README: the page's title
    assert "\n## Canary judge: measured\n" in first  # `# ` in JUDGE.md: a section of the page
    assert "\n### Method\n" in first
    under = hooks.on_page_markdown(
        "# Page\n\n<!-- include: README.md#Runtime guarantees -->\n",
        page=page,
        config=None,
        files=None,
    )
    assert "\n## Runtime guarantees\n" in under


def test_included_links_point_at_the_pages_that_include_their_targets() -> None:
    hooks = _hooks()
    pages = [
        types.SimpleNamespace(abs_src_path=str(path), src_uri=path.name)
        for path in (ROOT / "docs").glob("*.md")
    ]
    hooks.on_files(types.SimpleNamespace(documentation_pages=lambda: pages), config=None)
    text = (
        "[guide](deploy/README.md#runbooks) [judge](bench/JUDGE.md) [map](docs/architecture.md) "
        "[sizes](#large-payloads) [template](deploy/pipeline.yaml)"
    )
    assert hooks._relink(text, "README.md", "settings.md") == (
        "[guide](deploying.md#runbooks) [judge](judge.md) [map](architecture.md) "
        "[sizes](sending.md#large-payloads) [template](deploy/pipeline.yaml)"
    )
    # From deploy/README.md, `../README.md` is the README, whose title is the home page's.
    assert (
        hooks._relink("[top](../README.md)", "deploy/README.md", "a/b.md") == "[top](../index.md)"
    )


def test_the_api_reference_documents_every_public_name() -> None:
    reference = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    documented = {
        line.rsplit(".", 1)[-1] for line in reference.splitlines() if line.startswith(":::")
    }
    assert set(qworker.__all__) <= documented
    assert {"QWorkerSettings"} <= documented


@pytest.mark.slow
def test_mkdocs_build_strict_offline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_BUILD, "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "the docs build tried to reach the network" not in result.stderr
    for page in _nav_pages(_config().nav):
        built = site / (
            "index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html"
        )
        assert built.is_file(), page
    # The included sections and the generated reference are in the pages.
    assert "What happens to each message" in (site / "handlers" / "index.html").read_text()
    assert "Canary judge: measured" in (site / "judge" / "index.html").read_text()
    reference = (site / "reference" / "index.html").read_text()
    assert 'id="qworker.app.QWorker"' in reference
    assert 'id="qworker.settings.QWorkerSettings"' in reference
    assert not (site / "hooks.py").exists()
    # The settings page's table has a row for every setting, with its flag.
    from qworker.settings import QWorkerSettings  # noqa: PLC0415

    settings_page = (site / "settings" / "index.html").read_text()
    rows = (
        settings_page.count("<tr>")
        - 1
        - settings_page.count("<tr>", 0, settings_page.index('id="every-setting"'))
    )
    assert rows == len(QWorkerSettings.model_fields)
    missing = [
        n
        for n in QWorkerSettings.model_fields
        if f"--{n.replace('_', '-')}</code>" not in settings_page
    ]
    assert missing == []
    # No page loads anything from another host (fonts, scripts, styles, images).
    external = re.compile(r'<(?:script|link|img|iframe)[^>]*(?:src|href)="(?:https?:)?//')
    pages = [
        path.relative_to(site) for path in site.rglob("*.html") if external.search(path.read_text())
    ]
    assert pages == []


# `qworker <command> [<subcommand>] ...` in the pages' sources, continuation lines joined.
COMMAND_LINE = re.compile(r"(?:^|[\s/`])qworker (?P<args>[a-z][^`#\n]*)")


def _options(parser: argparse.ArgumentParser, words: list[str]) -> tuple[set[str], list[str]]:
    """The option strings of the (sub)command `words` name, and the words that named it."""
    named: list[str] = []
    while words:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or words[0] not in sub.choices:
            break
        parser = sub.choices[words[0]]
        named.append(words.pop(0))
    return {o for action in parser._actions for o in action.option_strings}, named


def _documented_command_lines() -> list[tuple[str, str]]:
    sources = [ROOT / "README.md", ROOT / "deploy" / "README.md", *(ROOT / "docs").glob("*.md")]
    found: list[tuple[str, str]] = []
    for path in sources:
        text = path.read_text(encoding="utf-8").replace("\\\n", " ")
        found.extend((path.name, m["args"]) for m in COMMAND_LINE.finditer(text))
    return found


def test_the_documented_commands_and_flags_exist() -> None:
    from qworker.cli import COMMANDS, build_parser  # noqa: PLC0415 (the full CLI, only here)

    parser = build_parser(None)
    names = {command.name for command in COMMANDS}
    checked = 0
    for source, args in _documented_command_lines():
        words = args.split()
        if words[0] not in names:
            continue  # prose ("qworker runs ...") or a handler module
        options, named = _options(parser, list(words))
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", args))  # `[--fifo]` too
        unknown = flags - options
        assert unknown == set(), f"{source}: `qworker {' '.join(named)}` has no {sorted(unknown)}"
        checked += 1
    assert checked >= 20  # the README's command lines are all seen


def test_the_documented_settings_exist() -> None:
    from qworker.settings import ENV_PREFIX, QWorkerSettings  # noqa: PLC0415

    sources = [ROOT / "README.md", ROOT / "deploy" / "README.md", *(ROOT / "docs").glob("*.md")]
    named = {
        name.removeprefix(ENV_PREFIX).lower()
        for path in sources
        for name in re.findall(r"\bQWORKER_[A-Z0-9_]+\b", path.read_text(encoding="utf-8"))
    }
    assert named
    assert named - set(QWorkerSettings.model_fields) == set()

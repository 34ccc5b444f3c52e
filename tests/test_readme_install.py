"""The README's "Using qworker in your own project" section matches the package it describes."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from test_readme_testing import blocks, section

ROOT = Path(__file__).resolve().parent.parent
INSTALL = section((ROOT / "README.md").read_text(), "## Using qworker in your own project")


def fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", INSTALL, re.DOTALL)


def test_the_local_extra_brings_the_embedded_server() -> None:
    assert "pip install qworker " in INSTALL
    assert "pip install 'qworker[local]'" in INSTALL
    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("moto[server]") for dep in ours["optional-dependencies"]["local"])
    assert not any(dep.startswith("moto") for dep in ours["dependencies"])


def test_the_example_pyproject_depends_on_qworker_with_the_local_extra_for_dev() -> None:
    (example,) = fenced("toml")
    project = tomllib.loads(example)["project"]
    assert project["dependencies"] == ["qworker"]
    assert "qworker[local]" in project["optional-dependencies"]["dev"]
    assert "pytest" in project["optional-dependencies"]["dev"]


def test_the_layout_names_the_files_the_testing_section_writes() -> None:
    (layout,) = fenced("text")
    for path in ("handlers/orders.py", "tests/test_orders.py"):
        assert path in {b.path for b in blocks()}
        directory, name = path.split("/")
        assert re.search(rf"{directory}/\n(?:.*\n)*?.*── {re.escape(name)}\b", layout), path
    assert "__init__.py" in layout


def test_the_version_line_is_what_the_command_prints() -> None:
    (commands,) = fenced("sh")
    assert "qworker --version                 # prints: qworker <version>" in commands
    done = subprocess.run(
        [sys.executable, "-m", "qworker", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert re.fullmatch(r"qworker \d+\.\d+\.\d+\S*\n", done.stdout), done.stdout

"""The README's "Testing your handlers" section runs as written, in a fresh project directory.

Every Python block of the section starts with a `# path` comment; the blocks are written to those
paths in an empty directory (plus the `handlers/__init__.py` the README's project layout has) and
run with `python -m pytest` in a subprocess: with pytest-asyncio in auto mode, in its default
strict mode, and without it at all (the block that says it needs pytest-asyncio is left out then).
The fixtures come from the plugin's entry point alone: nothing passes `-p`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECTION = "## Testing your handlers"
NEEDS_ASYNCIO = "(needs pytest-asyncio)"

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Block:
    path: str
    code: str
    needs_asyncio: bool

    @property
    def tests(self) -> int:
        return len(re.findall(r"^(?:async )?def test_", self.code, flags=re.MULTILINE))


def section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def blocks() -> list[Block]:
    found = []
    for code in re.findall(r"```python\n(.*?)```", section(README.read_text(), SECTION), re.DOTALL):
        first = code.splitlines()[0]
        assert first.startswith("# "), f"a testing block must start with '# <path>': {first!r}"
        path = first.removeprefix("# ").removesuffix(NEEDS_ASYNCIO).strip()
        found.append(Block(path, code, needs_asyncio=NEEDS_ASYNCIO in first))
    return found


def test_the_section_has_handler_and_test_blocks() -> None:
    found = blocks()
    assert any(b.path.startswith("handlers/") for b in found)
    assert sum(b.tests for b in found) >= 6
    for needed in ("Retry", "Reject", ".fifo", "timeout_s", "drain.run"):
        assert any(needed in b.code for b in found), needed


def project(tmp_path: Path, *, with_asyncio: bool) -> int:
    """Write the blocks into a fresh project; return how many tests they hold."""
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "__init__.py").write_text("")
    tests = 0
    for block in blocks():
        if block.needs_asyncio and not with_asyncio:
            continue
        target = tmp_path / block.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.code)
        tests += block.tests
    return tests


@pytest.mark.parametrize(
    ("mode", "config", "extra"),
    [
        ("auto", "[pytest]\nasyncio_mode = auto\n", []),
        ("strict", None, []),
        ("no pytest-asyncio", None, ["-p", "no:asyncio"]),
    ],
)
def test_the_readme_testing_blocks_pass_in_a_fresh_project(
    tmp_path: Path, mode: str, config: str | None, extra: list[str]
) -> None:
    expected = project(tmp_path, with_asyncio=mode != "no pytest-asyncio")
    if config is not None:
        (tmp_path / "pytest.ini").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "QWORKER_"))}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", ".", *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert re.match(rf"{expected} passed\b", summary), summary
    assert "skipped" not in summary, summary

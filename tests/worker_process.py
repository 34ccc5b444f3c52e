"""Long-running processes the tests start (`python -m qworker ...` workers, a reloader), each a
`qworker._process.ManagedProcess`: in its own session, its output in a log file under the test's
`tmp_path`, followed line by line with `wait_for_line`, and stopped by PID when the test ends.

`started()` / `qworker()` are context managers: whatever the test does, leaving the block stops the
process (SIGTERM to its group, a bounded wait, then SIGKILL). One-shot commands that exit by
themselves (`qworker send`, a bad setting) stay plain `subprocess.run` calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from qworker._process import ManagedProcess

__all__ = [
    "ROOT",
    "WAIT_S",
    "entries",
    "logged",
    "next_entry",
    "next_entry_async",
    "qworker",
    "started",
    "worker_env",
]

ROOT: Final = Path(__file__).resolve().parent.parent
WAIT_S: Final = 90.0
"""The most any one expected line may take (a worker starting on a loaded machine)."""


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without QWORKER_* and AWS_ENDPOINT*, PYTHONPATH at the project, plus `extra`.

    The scrub keeps a developer's own settings out of the child: it sees what the test gives it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWORKER_", "AWS_ENDPOINT"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


@contextlib.contextmanager
def started(
    argv: Sequence[str],
    *,
    cwd: Path,
    log_dir: Path,
    name: str,
    env: Mapping[str, str] | None = None,
    stdout_apart: bool = False,
) -> Iterator[ManagedProcess]:
    """Start `argv` (environment: `worker_env(env)`); stop it by PID when the block is left.

    Its stderr goes to ``log_dir/<name>.log``, and so does its stdout unless `stdout_apart`
    (then ``log_dir/<name>.out``).
    """
    process = ManagedProcess(
        argv,
        log_path=log_dir / f"{name}.log",
        stdout_path=log_dir / f"{name}.out" if stdout_apart else None,
        env=worker_env(env),
        cwd=cwd,
        name=name,
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def qworker(
    *args: str,
    cwd: Path,
    log_dir: Path,
    name: str = "qworker",
    env: Mapping[str, str] | None = None,
    stdout_apart: bool = False,
) -> contextlib.AbstractContextManager[ManagedProcess]:
    """`started()` for ``python -m qworker <args>``."""
    return started(
        [sys.executable, "-m", "qworker", *args],
        cwd=cwd,
        log_dir=log_dir,
        name=name,
        env=env,
        stdout_apart=stdout_apart,
    )


def _entry(line: str) -> dict[str, Any] | None:
    """The JSON log entry a line holds, or None (text, a span's lines, a partial object)."""
    if not line.startswith("{"):
        return None
    try:
        found = json.loads(line)
    except json.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


def logged(*actions: str) -> Callable[[str], bool]:
    """A `wait_for_line` match: a JSON log line whose "action" is one of `actions`."""

    def matches(line: str) -> bool:
        entry = _entry(line)
        return entry is not None and entry.get("action") in actions

    matches.__name__ = f"action in {actions}"
    return matches


def entries(lines: Iterable[str], *actions: str) -> list[dict[str, Any]]:
    """The JSON log entries among `lines`; only those with one of `actions` when any are given."""
    found = (_entry(line) for line in lines)
    return [e for e in found if e is not None and (not actions or e.get("action") in actions)]


def next_entry(process: ManagedProcess, *actions: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
    """The next JSON log entry (from `process`'s read cursor on) with one of `actions`."""
    entry = _entry(process.wait_for_line(logged(*actions), timeout_s=timeout_s))
    assert entry is not None
    return entry


async def next_entry_async(
    process: ManagedProcess, *actions: str, timeout_s: float = WAIT_S
) -> dict[str, Any]:
    """`next_entry()` for an event loop."""
    entry = _entry(await process.wait_for_line_async(logged(*actions), timeout_s=timeout_s))
    assert entry is not None
    return entry

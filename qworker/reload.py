"""`qworker run --reload`: run the worker as a child process and restart it when the source changes.

For development only. The reloader watches a directory tree (the working directory by default) for
changed `.py` files with `watchfiles` (the `reload` extra: `pip install 'qworker[reload]'`); on a
change it drains the running worker as a deployment would (SIGTERM: the worker stops receiving,
lets its handlers finish within `shutdown_grace_s`, releases what it could not finish, exits) and
only then starts a new one, so no message is lost and none is handled by two versions at once. A
worker that exits on its own (a syntax error, a crash) is started again at the next change.

It refuses to run in a container (ECS sets `ECS_CONTAINER_METADATA_URI(_V4)`, Kubernetes
`KUBERNETES_SERVICE_HOST`): a restart there belongs to the orchestrator. Both refusals are a
`ConfigError` naming `--reload` (the CLI exits 2 with that one line).

The child is `python -m qworker run <module>` with the same settings given as flags (the
environment, `QWORKER_*` included, is inherited), started in its own process group so a terminal's
Ctrl-C reaches only the reloader, which then drains the worker once and exits with its code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Final, final

from qworker.exceptions import ConfigError

__all__ = [
    "CONTAINER_VARIABLES",
    "STOP_MARGIN_S",
    "Reloader",
    "check_allowed",
    "child_command",
    "run_reloader",
]

CONTAINER_VARIABLES: Final = (
    "ECS_CONTAINER_METADATA_URI_V4",
    "ECS_CONTAINER_METADATA_URI",
    "KUBERNETES_SERVICE_HOST",
)
"""Variables a container orchestrator sets: with any of them, `--reload` is refused."""

STOP_MARGIN_S: Final = 10.0
"""After SIGTERM, the worker gets its grace plus this (its own flush and exit) before SIGKILL."""

_SHOWN: Final = 5
"""At most this many changed files are named in the restart line."""

_TICK_MS: Final = 500
"""How often the watcher wakes without a change, to notice a stop request or a worker's exit."""


def check_allowed(environ: Mapping[str, str]) -> None:
    """Refuse `--reload` where it must not run.

    Raises:
        ConfigError: In a container, or without watchfiles; the message names `--reload`.
    """
    found = next((name for name in CONTAINER_VARIABLES if environ.get(name)), None)
    if found is not None:
        raise ConfigError(
            f"invalid setting --reload: it is for development and refused in a container "
            f"({found} is set); the orchestrator restarts workers there"
        )
    try:
        import watchfiles  # noqa: F401, PLC0415 (an optional extra)
    except ImportError:
        raise ConfigError(
            "invalid setting --reload: it needs watchfiles: pip install 'qworker[reload]'"
        ) from None


def child_command(module: str, given: Mapping[str, object]) -> list[str]:
    """The worker's command: `python -m qworker run <module>` and the settings given as flags.

    Args:
        module: The handler module.
        given: Settings given on the command line (`None` values are left out): `True` / `False`
            become `--name` / `--no-name`, a list one `--name=item` per item, anything else
            `--name=value`.
    """
    command = [sys.executable, "-m", "qworker", "run", module]
    for name, value in given.items():
        if value is None:
            continue
        flag = f"--{name.replace('_', '-')}"
        if value is True:
            command.append(flag)
        elif value is False:
            command.append(f"--no-{flag[2:]}")
        elif isinstance(value, list | tuple):
            command.extend(f"{flag}={item}" for item in value)
        else:
            command.append(f"{flag}={value}")
    return command


def run_reloader(
    module: str,
    given: Mapping[str, object],
    *,
    grace_s: float,
    watch: Sequence[Path] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run `qworker run <module>` under the reloader until a stop signal; return its exit code.

    Raises:
        ConfigError: `--reload` is refused here (see `check_allowed`).
    """
    check_allowed(os.environ if environ is None else environ)
    return Reloader(
        child_command(module, given),
        watch=watch if watch is not None else [Path.cwd()],
        grace_s=grace_s,
    ).run()


def _say(text: str) -> None:
    print(f"qworker reload: {text}", file=sys.stderr, flush=True)  # noqa: T201 (for the terminal)


@final
class Reloader:
    """Runs a command as a child and restarts it, drained, when a watched `.py` file changes."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        watch: Sequence[Path],
        grace_s: float,
        margin_s: float = STOP_MARGIN_S,
        cwd: Path | None = None,
        say: Callable[[str], None] = _say,
    ) -> None:
        """Describe the reloader; `run()` starts it.

        Args:
            command: The child's command line.
            watch: Directories (or files) to watch.
            grace_s: The child's shutdown grace: it gets this plus `margin_s` to exit after
                SIGTERM, then SIGKILL.
            margin_s: The child's time to flush and exit after its grace.
            cwd: The child's working directory (default: the reloader's).
            say: Where the reloader's one-line reports go (default: stderr).
        """
        self.command = list(command)
        self.watch = [Path(p).resolve() for p in watch]
        self.grace_s = grace_s
        self.margin_s = margin_s
        self.cwd = cwd
        self.say = say
        self.stopping = threading.Event()
        self.restarts = 0
        self._child: subprocess.Popen[bytes] | None = None
        self._exit_reported = False

    def run(self) -> int:
        """Run until SIGTERM / SIGINT (or `stop()`); return the last child's exit code.

        A child killed by signal N gives 128 + N, as a shell reports it.
        """
        import watchfiles  # noqa: PLC0415 (an optional extra, checked by check_allowed)

        previous = self._install_signals()
        try:
            where = ", ".join(str(p) for p in self.watch)
            self.say(f"watching {where} for changed .py files")
            self._start()
            for changes in watchfiles.watch(
                *self.watch,
                watch_filter=watchfiles.PythonFilter(),
                stop_event=self.stopping,
                yield_on_timeout=True,
                rust_timeout=_TICK_MS,
                raise_interrupt=False,
            ):
                if self.stopping.is_set():
                    break
                if changes:
                    self._restart(sorted({Path(path) for _, path in changes}))
                else:
                    self._check_exited()
        finally:
            code = self._stop_child()
            self._restore_signals(previous)
        self.say(f"stopped (worker exit code {code})")
        return 128 - code if code < 0 else code  # killed by a signal: the shell's 128 + N

    def stop(self) -> None:
        """Ask the reloader to drain the worker and return (what SIGTERM / SIGINT do)."""
        self.stopping.set()

    def _restart(self, changed: Sequence[Path]) -> None:
        names = ", ".join(self._relative(p) for p in changed[:_SHOWN])
        more = f" and {len(changed) - _SHOWN} more" if len(changed) > _SHOWN else ""
        self.say(f"changed: {names}{more}; restarting the worker")
        self._stop_child()
        if self.stopping.is_set():
            return
        self.restarts += 1
        self._start()

    def _relative(self, path: Path) -> str:
        for root in self.watch:
            if path.is_relative_to(root):
                return str(path.relative_to(root))
        return str(path)

    def _start(self) -> None:
        self._child = subprocess.Popen(self.command, cwd=self.cwd, process_group=0)  # noqa: S603
        self._exit_reported = False
        self.say(f"worker started (pid {self._child.pid})")

    def _check_exited(self) -> None:
        child = self._child
        if child is None or self._exit_reported:
            return
        code = child.poll()
        if code is not None:
            self._exit_reported = True
            self.say(f"worker exited with code {code}; waiting for a change to start it again")

    def _stop_child(self) -> int:
        """Drain the child: SIGTERM, wait its grace and margin, then SIGKILL; its exit code."""
        child = self._child
        if child is None:
            return 0
        if child.poll() is None:
            bound = self.grace_s + self.margin_s
            self.say(f"draining the worker (pid {child.pid}): SIGTERM, up to {bound:g} s")
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=bound)
            except subprocess.TimeoutExpired:
                self.say(f"the worker (pid {child.pid}) did not exit in {bound:g} s: SIGKILL")
                child.kill()
                child.wait()
            self.say(f"worker exited with code {child.returncode}")
        return child.returncode

    def _install_signals(self) -> dict[int, object]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            del frame
            self.say(f"{signal.Signals(signum).name}: stopping")
            self.stopping.set()

        return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    @staticmethod
    def _restore_signals(previous: Mapping[int, object]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]  # what signal() returned

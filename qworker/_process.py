"""Start and stop server and worker processes by PID: one helper for every subprocess we own.

A `ManagedProcess` runs a command in its own session (so its group id is its pid and a signal to
the group reaches its children), with stdout and stderr captured to files; `wait_ready()` polls a
readiness check until it holds, the process exits, or the time is up; `stop()` sends SIGTERM to
the group, waits a bounded time, then SIGKILLs the group; `wait_for_line()` follows this run's log
as it grows. It is used by the LocalStack launcher (`qworker.localstack`), the drill's workers
(`qworker.drill.workers`), and the test suite's servers and `qworker` workers.

Stdlib only, Linux only (``/proc``): `scripts/localstack.py` runs it on any ``python3``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final, final

__all__ = [
    "ManagedProcess",
    "ProcessError",
    "alive",
    "read_text",
    "tail",
    "terminate",
]

STOP_TIMEOUT_S: Final = 5.0
POLL_S: Final = 0.05


class ProcessError(RuntimeError):
    """A process did not start, exited early, was not ready in time, or listened too widely."""


def read_text(path: Path) -> str | None:
    """The file's text, or None when it cannot be read."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file (or a note that there is none)."""
    return "\n".join((read_text(path) or f"(no log at {path})").splitlines()[-lines:])


@final
class ManagedProcess:
    """One subprocess in its own session, its output in log files, stopped by PID.

    `start()` runs it; `restart()` runs it again with the same command (after stopping it).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        stdout_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        """Describe the process.

        Args:
            argv: The command.
            log_path: Its stderr (and its stdout, unless `stdout_path` is given), appended to.
            stdout_path: Its stdout, appended to, when it should not go to the log.
            env: Its environment (default: ours).
            cwd: Its working directory (default: ours).
            name: How messages name it (default: the command's first word).
        """
        self.argv = tuple(argv)
        self.log_path = log_path
        self.stdout_path = stdout_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        self._process: subprocess.Popen[bytes] | None = None
        self.log_offset = 0  # where this run's output starts in the log
        self._cursor = 0  # where `wait_for_line()` reads on, in the log
        self._lines_read = 0

    @property
    def pid(self) -> int:
        """The process id (also its process group id).

        Raises:
            ProcessError: It was never started.
        """
        if self._process is None:
            raise ProcessError(f"{self.name} was never started")
        return self._process.pid

    @property
    def started(self) -> bool:
        """Whether `start()` ran."""
        return self._process is not None

    @property
    def returncode(self) -> int | None:
        """Its exit code once stopped and reaped (`stop()`, `kill()`, `wait_exit()`), else None."""
        return self._process.returncode if self._process is not None else None

    def start(self) -> int:
        """Start it in a new session, output appended to its log files; return its pid."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as files:
            log = files.enter_context(self.log_path.open("ab"))  # the child keeps its own copy
            self.log_offset = log.tell()
            self._cursor, self._lines_read = self.log_offset, 0
            out = files.enter_context(self.stdout_path.open("ab")) if self.stdout_path else log
            self._process = subprocess.Popen(  # noqa: S603 (our own command, no shell)
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log if out is not log else subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches its children
            )
        return self._process.pid

    def exited(self) -> bool:
        """Whether it has exited (without reaping it: its pid stays ours until `stop()`)."""
        process = self._process
        if process is None or process.returncode is not None:
            return True
        try:
            # WNOWAIT: see whether it exited, but leave the zombie (and its group id) in place.
            return (
                os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            )
        except ChildProcessError:  # reaped elsewhere (Popen.poll)
            process.poll()
            return True

    def is_running(self) -> bool:
        """Whether it was started and has not exited."""
        return self._process is not None and not self.exited()

    def _check(self, ready: Callable[[], bool]) -> bool:
        if self.exited():
            self.stop(0)
            raise ProcessError(f"{self.name} exited with {self.returncode}:\n{self.log_tail()}")
        return ready()

    def wait_ready(
        self,
        ready: Callable[[], bool],
        *,
        timeout_s: float,
        what: str = "ready",
        poll_s: float = POLL_S,
    ) -> float:
        """Poll `ready()` until it holds; return the seconds it took.

        `ready` may raise `ProcessError` itself to give up early (e.g. the port is taken).

        Raises:
            ProcessError: It exited first, or was not `what` after `timeout_s` (with its log's end).
        """
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            if self._check(ready):
                return time.monotonic() - began
            time.sleep(poll_s)
        raise ProcessError(f"{self.name} not {what} after {timeout_s:g} s:\n{self.log_tail()}")

    async def wait_ready_async(
        self,
        ready: Callable[[], bool],
        *,
        timeout_s: float,
        what: str = "ready",
        poll_s: float = 0.2,
    ) -> float:
        """`wait_ready()` for an event loop: the same checks, sleeping with `asyncio.sleep`.

        Raises:
            ProcessError: It exited first, or was not `what` after `timeout_s`.
        """
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            if self._check(ready):
                return time.monotonic() - began
            await asyncio.sleep(poll_s)  # bounded polling of another process's state
        raise ProcessError(f"{self.name} not {what} after {timeout_s:g} s:\n{self.log_tail()}")

    async def wait_exit_async(self, poll_s: float = 0.2) -> int:
        """Wait until it exits by itself; reap it (and SIGKILL any child left); return its code."""
        while True:
            if self.exited():
                return self.stop(0)
            await asyncio.sleep(poll_s)  # polling: asyncio cannot watch a Popen it did not start

    def wait_exit(self, timeout_s: float, poll_s: float = POLL_S) -> int:
        """Wait up to `timeout_s` for it to exit by itself; reap it (and SIGKILL any child left).

        Returns:
            Its exit code (negative: the signal that ended it).

        Raises:
            ProcessError: It was still running after `timeout_s` (it is left running).
        """
        deadline = time.monotonic() + timeout_s
        while not self.exited():
            if time.monotonic() >= deadline:
                raise ProcessError(
                    f"{self.name} still running after {timeout_s:g} s:\n{self.log_tail()}"
                )
            time.sleep(poll_s)  # polling, as in `wait_ready()`: no blocking wait that reaps
        return self.stop(0)

    def send_signal(self, signum: int) -> None:
        """Send `signum` to the process alone (not its group), as a supervisor would.

        Its children get only what it passes on; `stop()` and `kill()` signal the whole group.
        Nothing is sent once it has been reaped (its pid may be another process's by then).

        Raises:
            ProcessError: It was never started.
        """
        process = self._process
        if process is None:
            raise ProcessError(f"{self.name} was never started")
        if process.returncode is None:  # unreaped: the pid is still ours, even as a zombie
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM its group, wait up to `timeout_s`, SIGKILL the group, reap; return its code.

        A process never started, or already reaped, is left alone. 0 kills at once.
        """
        process = self._process
        if process is None:
            return 0
        terminate(process.pid, timeout_s, process)
        return process.returncode if process.returncode is not None else -1

    def kill(self) -> None:
        """SIGKILL its group at once, as a crash would."""
        self.stop(0)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of its log."""
        return tail(self.log_path, lines)

    def log_since_start(self) -> str:
        """What this run wrote to its log so far."""
        try:
            with self.log_path.open("rb") as file:
                file.seek(self.log_offset)
                return file.read().decode(errors="replace")
        except OSError:
            return ""

    def lines(self) -> list[str]:
        """Every whole line this run wrote to its log so far (without line ends).

        A last line without its line end is left out while it may still be being written, and
        included once the process has exited.
        """
        exited = self.exited()  # before reading: what it wrote before exiting is in the file
        text = self.log_since_start()
        if not exited and not text.endswith("\n"):
            text = text.rpartition("\n")[0]
        return text.splitlines()

    @property
    def lines_read(self) -> int:
        """How many lines of this run `wait_for_line()` has passed: the last match's index + 1."""
        return self._lines_read

    def wait_for_line(
        self,
        match: str | Callable[[str], bool],
        *,
        timeout_s: float,
        poll_s: float = POLL_S,
    ) -> str:
        """Follow this run's log to the next line that matches; return it (without its line end).

        Each call reads on from where the last one stopped (just after its match), so successive
        calls find successive lines. A line matches when it contains `match`, or `match(line)`
        holds. Only whole lines count until the process exits (then a last unended one does too).

        Raises:
            ProcessError: It exited without writing such a line (it is reaped, its group killed),
                or `timeout_s` passed (it is left running); either with its log's end.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            found = self._next_match(match)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise self._no_line(match, f"in {timeout_s:g} s")
            time.sleep(poll_s)  # the log is another process's file: polling is the only way

    async def wait_for_line_async(
        self,
        match: str | Callable[[str], bool],
        *,
        timeout_s: float,
        poll_s: float = POLL_S,
    ) -> str:
        """`wait_for_line()` for an event loop: the same cursor, sleeping with `asyncio.sleep`.

        Raises:
            ProcessError: It exited without such a line, or `timeout_s` passed.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            found = self._next_match(match)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise self._no_line(match, f"in {timeout_s:g} s")
            await asyncio.sleep(poll_s)  # bounded polling of another process's file

    def _next_match(self, match: str | Callable[[str], bool]) -> str | None:
        """The next matching line from the cursor on, or None (raising if it has exited)."""
        exited = self.exited()  # before reading: what it wrote before exiting is in the file
        matches = (lambda line: match in line) if isinstance(match, str) else match
        for line in self._read_lines(final=exited):
            if matches(line):
                return line
        if exited:
            self.stop(0)
            raise self._no_line(match, f"before it exited with {self.returncode}")
        return None

    def _read_lines(self, *, final: bool) -> Iterator[str]:
        """The lines after the cursor, moving it past each one as it is handed out."""
        base = self._cursor
        try:
            with self.log_path.open("rb") as file:
                file.seek(base)
                data = file.read()
        except OSError:
            return
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            if end < 0 and not final:
                return  # a line still being written
            stop = len(data) if end < 0 else end + 1
            line = data[start:stop].decode(errors="replace").rstrip("\r\n")
            start = stop
            self._cursor = base + stop
            self._lines_read += 1
            yield line

    def _no_line(self, match: str | Callable[[str], bool], when: str) -> ProcessError:
        wanted = repr(match) if isinstance(match, str) else getattr(match, "__name__", "a match")
        return ProcessError(f"{self.name} wrote no line with {wanted} {when}:\n{self.log_tail()}")

    def __repr__(self) -> str:
        """Show the command's name and the process."""
        pid = self._process.pid if self._process is not None else None
        return f"<ManagedProcess {self.name} pid={pid} running={self.is_running()}>"


def terminate(pid: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the process group of `pid`, wait up to `timeout_s`, then SIGKILL the group.

    Args:
        pid: A process started in its own session, so its group id is its pid.
        timeout_s: Grace period; 0 kills at once.
        process: Its `Popen` when we are its parent. We reap it only after the last signal: until
            then it is at worst a zombie, so neither its pid nor its group id can be someone else's.
    """
    if process is not None and process.returncode is not None:
        return  # reaped already: the pid may belong to another process by now
    if timeout_s > 0:
        _signal_group(pid, signal.SIGTERM)
        _wait_exit(pid, time.monotonic() + timeout_s, process)
    _signal_group(pid, signal.SIGKILL)  # stragglers: children, or a leader that ignored SIGTERM
    if process is not None:
        process.wait(STOP_TIMEOUT_S)
    else:
        _wait_exit(pid, time.monotonic() + STOP_TIMEOUT_S, None)


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def _wait_exit(pid: int, deadline: float, process: subprocess.Popen[bytes] | None) -> None:
    while time.monotonic() < deadline:
        if process is not None:
            try:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return
            except ChildProcessError:
                return
        elif not alive(pid):
            return
        time.sleep(POLL_S)


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    stat = read_text(Path(f"/proc/{pid}/stat"))
    return stat is not None and stat.rpartition(")")[2].split()[0] != "Z"

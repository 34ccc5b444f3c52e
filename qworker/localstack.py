"""Install, start and stop LocalStack on 127.0.0.1, without Docker.

LocalStack runs in host mode (``python -m localstack.runtime.main``) from its OWN virtualenv under
the user's cache directory (``~/.cache/qworker/localstack-<version>``), created on first use,
because its pins clash with aiobotocore's botocore. This module is stdlib-only, so it works from
an installed qworker as from a checkout (``scripts/localstack.py`` runs it with any ``python3``)::

    python -m qworker.localstack install
    python -m qworker.localstack start [--port N] [--data-dir D] [--fast]   # prints the endpoint
    python -m qworker.localstack stop [--pidfile P]

LocalStack's default (twisted) gateway ignores the host in ``GATEWAY_LISTEN`` and listens on every
interface. We keep twisted (about twice as fast as hypercorn here) and force it onto loopback with
a small launcher (``_LAUNCHER``), then check the listening sockets of the whole process tree:
``start`` fails loudly if anything listens beyond 127.0.0.1. Linux only (``/proc``, ``fcntl``).
The process itself is a `qworker._process.ManagedProcess`: started in its own session, stopped
by PID (SIGTERM, a bounded wait, then SIGKILL of its group).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO, Final, final

from qworker._localstack_venv import (
    CACHE_DIR,
    PYTHON_VERSION,
    REQUIREMENTS,
    VERSION,
    LocalStackError,
    install,
    installed,
    venv_dir,
)
from qworker._loopback import HOST, check_loopback_only, free_port, listening_addresses
from qworker._process import ManagedProcess, ProcessError, alive, read_text, terminate

__all__ = [
    "CACHE_DIR",
    "HOST",
    "PYTHON_VERSION",
    "REQUIREMENTS",
    "SERVICES",
    "VERSION",
    "LocalStackError",
    "LocalStackServer",
    "check_loopback_only",
    "free_port",
    "install",
    "installed",
    "listening_addresses",
    "main",
    "scratch_root",
    "start",
    "terminate",
    "venv_dir",
]

SERVICES: Final = "sqs,cloudwatch,logs,cloudformation,iam,sts,s3,events,sns"
DEFAULT_DATA_DIR: Final = CACHE_DIR / "localstack-run"  # the CLI's; start() uses a temp dir
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 5.0  # graceful: 1-2 s (10+ s with metrics pending; no state to save)
_PIDFILE: Final = "localstack.pid"
_LOG: Final = "localstack.log"
# Settings from the caller's environment that must not reach LocalStack's interpreter.
# LocalStack's throwaway state (CloudWatch keeps every datum in SQLite, a commit per datum) goes
# to memory where the machine has a tmpfs: on a disk each commit waits for an fsync (about 17 ms
# measured, against 0.2 ms on tmpfs), which serialises metric writes and makes reads lag.
_MEMORY_DIR: Final = Path("/dev/shm")  # noqa: S108 (a tmpfs mount, not a shared temp file)
_DROPPED_ENV: Final = frozenset({"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"})

# Runs inside LocalStack's venv. localstack/runtime/server/twisted.py (4.13.1) builds
# `endpoints.TCP4ServerEndpoint(reactor, port)` with no interface ("TODO: interface = host?"), so
# twisted binds 0.0.0.0 whatever GATEWAY_LISTEN says. A subclass whose interface defaults to our
# host fixes every such endpoint (looked up on the module at call time) before the runtime starts.
_LAUNCHER: Final = """\
import os, runpy
from twisted.internet import endpoints

HOST = os.environ["QWORKER_LOCALSTACK_BIND"]

class LoopbackTCP4ServerEndpoint(endpoints.TCP4ServerEndpoint):
    def __init__(self, reactor, port, backlog=50, interface=""):
        if interface in ("", "0.0.0.0"):
            interface = HOST
        super().__init__(reactor, port, backlog, interface)

endpoints.TCP4ServerEndpoint = LoopbackTCP4ServerEndpoint
runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
"""


@final
class LocalStackServer:
    """One LocalStack process listening on 127.0.0.1:`port`; start it with `start()`.

    `kill()` then `restart()` brings it back on the same port with an empty state (no persistence).
    """

    def __init__(
        self, *, port: int, data_dir: Path, env: dict[str, str], python: Path, owns_data_dir: bool
    ) -> None:
        """Describe a server; `start()` builds it, `restart()` runs it."""
        self.port = port
        self.data_dir = data_dir
        self.log_path = data_dir / _LOG
        self.pidfile = data_dir / _PIDFILE
        self._owns_data_dir = owns_data_dir
        self._process = ManagedProcess(
            [str(python), "-c", _LAUNCHER],
            log_path=self.log_path,
            env=env,
            cwd=data_dir,
            name="LocalStack",
        )

    @property
    def endpoint_url(self) -> str:
        """The URL AWS clients take as ``endpoint_url``."""
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The LocalStack process id (also written to `pidfile`)."""
        if not self._process.started:
            raise LocalStackError("LocalStack is not running")
        return self._process.pid

    def is_running(self) -> bool:
        """Return whether the process is alive."""
        return self._process.is_running()

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """(Re)start the process on the same port and wait until it is healthy on loopback only.

        Raises:
            LocalStackError: It exited, timed out, or listened beyond loopback (it is then killed).
        """
        if self.is_running():
            self.stop(remove_data=False)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "tmp").mkdir(exist_ok=True)  # the private TMPDIR must exist to be used
        pid = self._process.start()
        self.pidfile.write_text(f"{pid}\n")
        try:
            self._process.wait_ready(self._healthy, timeout_s=timeout_s, what="healthy")
            check_loopback_only(pid)
        except ProcessError as error:
            self.kill()
            raise LocalStackError(str(error)) from None
        except BaseException:
            self.kill()
            raise

    def _healthy(self) -> bool:
        # Ask only once it listens itself: the port may be someone else's.
        if self.port in listening_addresses(self._process.pid).get(HOST, set()):
            return _sqs_available(f"{self.endpoint_url}/_localstack/health")
        if "Address already in use" in self._process.log_since_start():
            # LocalStack logs it and carries on, deaf: fail now rather than at the timeout.
            raise LocalStackError(f"port {self.port} is taken:\n{self._process.log_tail()}")
        return False

    def stop(self, timeout_s: float = STOP_TIMEOUT_S, *, remove_data: bool = True) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL the process group; remove a temp data dir."""
        self._process.stop(timeout_s)
        self.pidfile.unlink(missing_ok=True)
        if remove_data and self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the process group at once, as a crash would; `restart()` brings it back."""
        self._process.kill()

    def __repr__(self) -> str:
        """Show the endpoint and the process."""
        pid = self._process.pid if self._process.started else None
        return f"<LocalStackServer {self.endpoint_url} pid={pid} running={self.is_running()}>"


def start(
    port: int | None = None,
    *,
    fast: bool = False,
    data_dir: Path | None = None,
    gateway: str = "twisted",
    venv: Path | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> LocalStackServer:
    """Start LocalStack on 127.0.0.1 and wait until SQS is available.

    Args:
        port: The port to listen on; a free one when None.
        fast: Disable LocalStack's own per-queue CloudWatch metrics (about 3x SQS throughput).
        data_dir: Holds LocalStack's files, its log and pid file; a temp dir (removed by
            ``stop()``) when None.
        gateway: ``twisted`` (forced onto loopback, faster) or ``hypercorn``.
        venv: LocalStack's virtualenv, made by `install()`; defaults to `venv_dir()`.
        timeout_s: How long to wait for it to be healthy.

    Returns:
        The running server.

    Raises:
        LocalStackError: It is not installed, did not become healthy, or listened beyond loopback.
    """
    python = (venv or venv_dir()) / "bin" / "python"
    if not python.exists():
        raise LocalStackError(f"LocalStack is not installed in {python.parent.parent}: run install")
    owns_data_dir = data_dir is None
    data_dir = (
        Path(tempfile.mkdtemp(prefix="qworker-localstack-", dir=scratch_root()))
        if data_dir is None
        else data_dir
    )
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(
        GATEWAY_LISTEN=f"{HOST}:{port}",
        GATEWAY_SERVER=gateway,
        QWORKER_LOCALSTACK_BIND=HOST,  # read by _LAUNCHER
        LOCALSTACK_HOST=f"{HOST}:{port}",  # host in URLs built outside a request (CloudFormation)
        DNS_ADDRESS="0",  # no DNS server: it would bind port 53 on every interface
        SQS_ENDPOINT_STRATEGY="dynamic",  # queue URLs follow the request's host and port
        SERVICES=SERVICES,
        FILESYSTEM_ROOT=str(data_dir / "filesystem"),  # per instance: it is cleared on start
        # LocalStack believes it runs in a container and keeps state (CloudWatch's database among
        # it) under $TMPDIR/localstack, which it deletes when it stops: one instance per machine
        # would wipe another's. A private TMPDIR per instance keeps them apart.
        TMPDIR=str(data_dir / "tmp"),
        SKIP_SSL_CERT_DOWNLOAD="1",  # no network: a self-signed certificate will do
        DISABLE_EVENTS="1",  # no analytics calls home
        PYTHONUNBUFFERED="1",  # the log file is readable while it runs
    )
    if fast:
        env["SQS_DISABLE_CLOUDWATCH_METRICS"] = "1"
    server = LocalStackServer(
        port=port, data_dir=data_dir, env=env, python=python, owns_data_dir=owns_data_dir
    )
    try:
        server.restart(timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def scratch_root() -> str | None:
    """Where a temporary data directory goes: the tmpfs if there is a writable one, else $TMPDIR."""
    if _MEMORY_DIR.is_dir() and os.access(_MEMORY_DIR, os.W_OK | os.X_OK):
        return str(_MEMORY_DIR)
    return None


def _sqs_available(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (http on loopback)
            health = json.load(response)
    except (OSError, ValueError):  # refused, reset, timed out, not JSON yet
        return False
    return health.get("services", {}).get("sqs") in {"available", "running"}


def _say(text: str) -> None:
    print(text, file=sys.stderr)  # noqa: T201 (the command's progress)


def _cli_start(args: argparse.Namespace, out: IO[str]) -> None:
    data_dir: Path = args.data_dir
    pidfile = data_dir / _PIDFILE
    old = read_text(pidfile)
    if old and _is_localstack(int(old)):
        raise LocalStackError(f"LocalStack already runs with pid {old.strip()} ({pidfile})")
    began = time.monotonic()
    if not installed():
        _say(f"installing LocalStack {VERSION} into {venv_dir()} (once) ...")
    install()  # a no-op once installed
    server = start(args.port, fast=args.fast, data_dir=data_dir, gateway=args.gateway)
    _say(
        f"LocalStack {VERSION} pid {server.pid} healthy in {time.monotonic() - began:.1f} s; "
        f"pid file {server.pidfile}, log {server.log_path}"
    )
    print(server.endpoint_url, file=out)


def _cli_stop(args: argparse.Namespace) -> None:
    pidfile: Path = args.pidfile
    text = read_text(pidfile)
    if text is None:
        _say(f"no pid file at {pidfile}: nothing to stop")
        return
    pid = int(text)
    if _is_localstack(pid):
        terminate(pid, STOP_TIMEOUT_S)
        _say(f"stopped LocalStack pid {pid}")
    else:
        _say(f"pid {pid} is not LocalStack any more: removing the stale pid file")
    pidfile.unlink(missing_ok=True)


def _is_localstack(pid: int) -> bool:
    cmdline = read_text(Path(f"/proc/{pid}/cmdline"))
    return alive(pid) and cmdline is not None and "localstack.runtime.main" in cmdline


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command line; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help=f"install LocalStack {VERSION} in {venv_dir()}")
    start_parser = commands.add_parser("start", help="start it on 127.0.0.1, print the endpoint")
    start_parser.add_argument("--port", type=int, help="default: a free port")
    start_parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    start_parser.add_argument("--fast", action="store_true", help="no per-queue CloudWatch metrics")
    start_parser.add_argument("--gateway", choices=("twisted", "hypercorn"), default="twisted")
    stop_parser = commands.add_parser("stop", help="stop it by the pid in its pid file")
    stop_parser.add_argument("--pidfile", type=Path, default=DEFAULT_DATA_DIR / _PIDFILE)
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            began = time.monotonic()
            where = install()
            print(f"LocalStack {VERSION} in {where} ({time.monotonic() - began:.1f} s)")  # noqa: T201
        elif args.command == "start":
            _cli_start(args, sys.stdout)
        else:
            _cli_stop(args)
    except ProcessError as error:
        _say(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Install, start and stop LocalStack on 127.0.0.1, without Docker.

LocalStack runs in host mode (``python -m localstack.runtime.main``) from its OWN virtualenv,
because its pins clash with aiobotocore's botocore. This file is both a
standalone, stdlib-only script (run it with ``python3`` or the project's venv) and a module the test
suite imports (``tests/servers.py``)::

    python3 scripts/localstack.py install
    python3 scripts/localstack.py start [--port N] [--data-dir D] [--fast]   # prints the endpoint
    python3 scripts/localstack.py stop [--pidfile P]

LocalStack's default (twisted) gateway ignores the host in ``GATEWAY_LISTEN`` and listens on every
interface. We keep twisted (about twice as fast as hypercorn here) and force it onto loopback with
a small launcher (``_LAUNCHER``), then check the listening sockets of the whole process tree:
``start`` fails loudly if anything listens beyond 127.0.0.1. Linux only (``/proc``, ``fcntl``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO, Final, final

VERSION: Final = "4.13.1"
PYTHON_VERSION: Final = "3.11"  # localstack-core 4.13.1 runs on 3.11; newer releases need 3.13
REQUIREMENTS: Final = (
    f"localstack-core[runtime]=={VERSION}",
    # Pins LocalStack's own metadata does not carry but its runtime needs here.
    "cbor2<6",
    "pyopenssl==25.3.0",
    "cryptography>=45.0.7,<47",
    "service-identity",
)
HOST: Final = "127.0.0.1"
SERVICES: Final = "sqs,cloudwatch,logs,cloudformation,iam,sts,s3,events,sns"
CACHE_DIR: Final = Path.home() / ".cache" / "qworker"
DEFAULT_DATA_DIR: Final = CACHE_DIR / "localstack-run"  # the CLI's; start() uses a temp dir
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 5.0  # graceful: 1-2 s (10+ s with metrics pending; no state to save)
_POLL_S: Final = 0.05
_STAMP: Final = "qworker-requirements.txt"
_PIDFILE: Final = "localstack.pid"
_LOG: Final = "localstack.log"
_TCP_LISTEN: Final = "0A"  # socket state in /proc/net/tcp (include/net/tcp_states.h)
# Settings from the caller's environment that must not reach LocalStack's interpreter.
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


class LocalStackError(RuntimeError):
    """LocalStack could not be installed, started or stopped."""


def venv_dir() -> Path:
    """Return LocalStack's virtualenv: ``$QWORKER_LOCALSTACK_VENV`` or a per-version cache dir."""
    configured = os.environ.get("QWORKER_LOCALSTACK_VENV")
    return Path(configured) if configured else CACHE_DIR / f"localstack-{VERSION}"


def install(venv: Path | None = None) -> Path:
    """Create LocalStack's own virtualenv and install it; a no-op when the stamp matches.

    Args:
        venv: where to install; defaults to `venv_dir()`.

    Returns:
        The virtualenv's directory.

    Raises:
        LocalStackError: no Python 3.11 was found, or pip failed (the message ends with its log).
    """
    venv = venv or venv_dir()
    wanted = "\n".join((f"python {PYTHON_VERSION}", *REQUIREMENTS)) + "\n"
    if _read(venv / _STAMP) == wanted:
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Two test sessions may install at once: the second waits, then finds the stamp.
    with (venv.parent / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read(venv / _STAMP) != wanted:
            _create(venv)
            (venv / _STAMP).write_text(wanted)
    return venv


def _create(venv: Path) -> None:
    python = venv / "bin" / "python"
    if not python.exists():
        _run([_find_python(), "-m", "venv", "--clear", str(venv)], venv.parent / f"{venv.name}.log")
    _run([str(python), "-m", "pip", "install", *REQUIREMENTS], venv / "install.log")


def _find_python() -> str:
    candidates = [os.environ.get("QWORKER_LOCALSTACK_PYTHON"), "python3.11", "python3"]
    for name in [*candidates, sys.executable]:
        path = name and shutil.which(name)
        if not path:
            continue
        probe = [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
        found = subprocess.run(probe, capture_output=True, text=True, check=False)
        if found.stdout.strip() == PYTHON_VERSION:
            return path
    raise LocalStackError(
        f"LocalStack {VERSION} needs Python {PYTHON_VERSION}: put python{PYTHON_VERSION} on PATH "
        "or set QWORKER_LOCALSTACK_PYTHON"
    )


def _run(command: list[str], log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if result.returncode:
        raise LocalStackError(f"{' '.join(command)} failed:\n{_tail(log_path)}")


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
        self._env = env
        self._python = python
        self._owns_data_dir = owns_data_dir
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """The URL AWS clients take as ``endpoint_url``."""
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The LocalStack process id (also written to `pidfile`)."""
        if self._process is None:
            raise LocalStackError("LocalStack is not running")
        return self._process.pid

    def is_running(self) -> bool:
        """Return whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """(Re)start the process on the same port and wait until it is healthy on loopback only.

        Raises:
            LocalStackError: it exited, timed out, or listened beyond loopback (it is then killed).
        """
        if self.is_running():
            self.stop(remove_data=False)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "tmp").mkdir(exist_ok=True)  # the private TMPDIR must exist to be used
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            log_offset = log.tell()
            self._process = process = subprocess.Popen(
                [str(self._python), "-c", _LAUNCHER],
                env=self._env,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches its children
            )
        self.pidfile.write_text(f"{process.pid}\n")
        try:
            self._wait_healthy(process, log_offset, time.monotonic() + timeout_s)
            check_loopback_only(process.pid)
        except BaseException:
            self.kill()
            raise

    def _wait_healthy(
        self, process: subprocess.Popen[bytes], log_offset: int, deadline: float
    ) -> None:
        url = f"{self.endpoint_url}/_localstack/health"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LocalStackError(
                    f"LocalStack exited with {process.returncode}:\n{_tail(self.log_path)}"
                )
            # Ask only once it listens itself: the port may be someone else's.
            if self.port in listening_addresses(process.pid).get(HOST, set()):
                if _sqs_available(url):
                    return
            elif "Address already in use" in _read_from(self.log_path, log_offset):
                # LocalStack logs it and carries on, deaf: fail now rather than at the timeout.
                raise LocalStackError(f"port {self.port} is taken:\n{_tail(self.log_path)}")
            time.sleep(_POLL_S)
        raise LocalStackError(f"LocalStack not healthy at {url}:\n{_tail(self.log_path)}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S, *, remove_data: bool = True) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL the process group; remove a temp data dir."""
        if self._process is not None:
            terminate(self._process.pid, timeout_s, self._process)
        self.pidfile.unlink(missing_ok=True)
        if remove_data and self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the process group at once, as a crash would; `restart()` brings it back."""
        if self._process is not None:
            terminate(self._process.pid, 0, self._process)

    def __repr__(self) -> str:
        """Show the endpoint and the process."""
        pid = self._process.pid if self._process else None
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
        port: the port to listen on; a free one when None.
        fast: disable LocalStack's own per-queue CloudWatch metrics (about 3x SQS
            throughput).
        data_dir: holds LocalStack's files, its log and pid file; a temp dir (removed by
            ``stop()``) when None.
        gateway: ``twisted`` (forced onto loopback, faster) or ``hypercorn``.
        venv: LocalStack's virtualenv, made by `install()`; defaults to `venv_dir()`.
        timeout_s: how long to wait for it to be healthy.

    Returns:
        The running server.

    Raises:
        LocalStackError: it is not installed, did not become healthy, or listened beyond loopback.
    """
    python = (venv or venv_dir()) / "bin" / "python"
    if not python.exists():
        raise LocalStackError(f"LocalStack is not installed in {python.parent.parent}: run install")
    owns_data_dir = data_dir is None
    data_dir = (
        Path(tempfile.mkdtemp(prefix="qworker-localstack-")) if data_dir is None else data_dir
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


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def terminate(pid: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the process group of `pid`, wait up to `timeout_s`, then SIGKILL the group.

    Args:
        pid: a process started in its own session, so its group id is its pid.
        timeout_s: grace period; 0 kills at once.
        process: its `Popen` when we are its parent. We reap it only after the last signal: until
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
            # WNOWAIT: see whether it exited, but leave the zombie (and its group id) in place.
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        elif not _alive(pid):
            return
        time.sleep(_POLL_S)


def _alive(pid: int) -> bool:
    stat = _read(Path(f"/proc/{pid}/stat"))
    return stat is not None and stat.rpartition(")")[2].split()[0] != "Z"


def check_loopback_only(pid: int) -> None:
    """Fail if `pid` or a descendant listens on anything but a loopback address.

    Raises:
        LocalStackError: naming the offending addresses.
    """
    listening = listening_addresses(pid)
    exposed = sorted(
        address for address in listening if not ipaddress.ip_address(address).is_loopback
    )
    if exposed:
        raise LocalStackError(f"pid {pid} listens beyond loopback on {exposed}: refusing to run")
    if not listening:
        raise LocalStackError(f"pid {pid} listens on no TCP socket")


def listening_addresses(pid: int) -> dict[str, set[int]]:
    """Map each address that `pid` and its descendants listen on (TCP) to its ports.

    Reads ``/proc``, as ``ss -ltnp`` does, so it needs no tool and parses no text meant for people.
    """
    pids = _descendants(pid) | {pid}
    inodes: set[str] = set()
    for member in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{member}/fd"):
                with contextlib.suppress(OSError):
                    target = str(Path(fd.path).readlink())
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found: dict[str, set[int]] = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        lines = (_read(Path(f"/proc/{pid}/net/{table}")) or "").splitlines()[1:]
        for fields in (line.split() for line in lines):
            if fields[3] == _TCP_LISTEN and fields[9] in inodes:
                address, port = fields[1].split(":")
                found.setdefault(_decode_address(address, family), set()).add(int(port, 16))
    return found


def _decode_address(hex_address: str, family: int) -> str:
    # /proc/net/tcp prints each 32-bit word of the address in the host's byte order.
    words = (int(hex_address[i : i + 8], 16) for i in range(0, len(hex_address), 8))
    return socket.inet_ntop(family, b"".join(struct.pack("=I", word) for word in words))


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        stat = _read(entry / "stat") if entry.name.isdigit() else None
        if stat:
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _sqs_available(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (http on loopback)
            health = json.load(response)
    except (OSError, ValueError):  # refused, reset, timed out, not JSON yet
        return False
    return health.get("services", {}).get("sqs") in {"available", "running"}


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join((_read(path) or f"(no log at {path})").splitlines()[-lines:])


def _cli_start(args: argparse.Namespace, out: IO[str]) -> None:
    data_dir: Path = args.data_dir
    pidfile = data_dir / _PIDFILE
    old = _read(pidfile)
    if old and _is_localstack(int(old)):
        raise LocalStackError(f"LocalStack already runs with pid {old.strip()} ({pidfile})")
    began = time.monotonic()
    if _read(venv_dir() / _STAMP) is None:
        print(f"installing LocalStack {VERSION} into {venv_dir()} (once) ...", file=sys.stderr)
    install()  # a no-op once installed
    server = start(args.port, fast=args.fast, data_dir=data_dir, gateway=args.gateway)
    print(
        f"LocalStack {VERSION} pid {server.pid} healthy in {time.monotonic() - began:.1f} s; "
        f"pid file {server.pidfile}, log {server.log_path}",
        file=sys.stderr,
    )
    print(server.endpoint_url, file=out)


def _cli_stop(args: argparse.Namespace) -> None:
    pidfile: Path = args.pidfile
    text = _read(pidfile)
    if text is None:
        print(f"no pid file at {pidfile}: nothing to stop", file=sys.stderr)
        return
    pid = int(text)
    if _is_localstack(pid):
        terminate(pid, STOP_TIMEOUT_S)
        print(f"stopped LocalStack pid {pid}", file=sys.stderr)
    else:
        print(f"pid {pid} is not LocalStack any more: removing the stale pid file", file=sys.stderr)
    pidfile.unlink(missing_ok=True)


def _is_localstack(pid: int) -> bool:
    cmdline = _read(Path(f"/proc/{pid}/cmdline"))
    return _alive(pid) and cmdline is not None and "localstack.runtime.main" in cmdline


def main(argv: list[str] | None = None) -> int:
    """Run the command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
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
            print(f"LocalStack {VERSION} in {where} ({time.monotonic() - began:.1f} s)")
        elif args.command == "start":
            _cli_start(args, sys.stdout)
        else:
            _cli_stop(args)
    except LocalStackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real SQS-compatible servers on 127.0.0.1 for the test suite: moto and LocalStack, as fixtures.

Both run as subprocesses that tests can kill and bring back on the same port (fault tests), and both
are checked to listen on loopback only. LocalStack comes from ``scripts/localstack.py``, which
installs it in its own virtualenv; if it cannot be installed or started, its fixture FAILS, so CI
goes red instead of skipping. A restarted server starts empty: neither keeps state across restarts.

``tests/conftest.py`` imports the fixtures: ``moto_server``, ``localstack_server`` (session-scoped)
and ``aws_env``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, final

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

HOST: Final = "127.0.0.1"
MOTO_START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 5.0
_POLL_S: Final = 0.05
LOCALSTACK_SCRIPT: Final = Path(__file__).resolve().parent.parent / "scripts" / "localstack.py"

# `python -m moto.server`, minus one header. http.server sends `Server: Werkzeug/...`, then moto's
# app sends its own `server: amazon.com` (getmoto/moto#9930). aiohttp rejects a duplicate Server
# header in asyncio debug mode (`python -X dev`, PYTHONASYNCIODEBUG=1), so every aiobotocore call
# would fail there; this launcher drops moto's copy.
_MOTO_LAUNCHER: Final = """\
import sys
from moto import server

class OneServerHeader(server.MotoRequestHandler):
    def send_header(self, keyword, value):
        if keyword.lower() != "server" or keyword == "Server":
            super().send_header(keyword, value)

server.MotoRequestHandler = OneServerHeader
server.main(sys.argv[1:])
"""


def _load_localstack_script() -> ModuleType:
    # scripts/ is not a package, and the file must not shadow the real `localstack` package.
    spec = importlib.util.spec_from_file_location("qworker_localstack_script", LOCALSTACK_SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {LOCALSTACK_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # classes look their module up while being defined
    spec.loader.exec_module(module)
    return module


localstack_script = _load_localstack_script()


class SqsServer(Protocol):
    """What the server fixtures yield."""

    @property
    def endpoint_url(self) -> str:
        """The URL AWS clients take as ``endpoint_url``, e.g. ``http://127.0.0.1:40123``."""

    @property
    def pid(self) -> int:
        """The server's process id."""

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL) and remove its files."""

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""

    def restart(self) -> None:
        """Start it again, empty, on the same port, and wait until it answers."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    port: int = localstack_script.free_port()
    return port


def listening_addresses(pid: int) -> dict[str, set[int]]:
    """Map each address `pid` and its descendants listen on (TCP) to its ports, from /proc."""
    found: dict[str, set[int]] = localstack_script.listening_addresses(pid)
    return found


@final
class MotoServer:
    """moto's server mode (``python -m moto.server``) on 127.0.0.1, in a subprocess."""

    def __init__(self, port: int | None = None) -> None:
        """Describe a server on `port` (a free one when None); `restart()` starts it."""
        self.port = port or free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="qworker-moto-"))
        self.log_path = self.data_dir / "moto.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """The URL AWS clients take as ``endpoint_url``."""
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The moto process id."""
        if self._process is None:
            raise RuntimeError("moto is not running")
        return self._process.pid

    def is_running(self) -> bool:
        """Return whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def restart(self, timeout_s: float = MOTO_START_TIMEOUT_S) -> None:
        """(Re)start moto on the same port, wait until it answers, check it is on loopback only."""
        if self.is_running():
            self.kill()
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self._process = subprocess.Popen(
                [sys.executable, "-c", _MOTO_LAUNCHER, "-H", HOST, "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, like LocalStack's
            )
        try:
            self._wait_answering(time.monotonic() + timeout_s)
            localstack_script.check_loopback_only(self._process.pid)
        except BaseException:
            self.kill()
            raise

    def _wait_answering(self, deadline: float) -> None:
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto exited with {self._process.returncode}: {self._log()}")
            # Ask only once it listens itself: the port may be someone else's.
            listening = self.port in listening_addresses(self._process.pid).get(HOST, set())
            if listening and self._request("GET", "/moto-api/data.json", timeout_s=1) is not None:
                return
            time.sleep(_POLL_S)
        raise RuntimeError(f"moto did not answer at {self.endpoint_url}: {self._log()}")

    def reset(self) -> None:
        """Delete every resource (queues, messages) through ``/moto-api/reset``."""
        if self._request("POST", "/moto-api/reset", timeout_s=10) != 200:
            raise RuntimeError(f"moto reset failed at {self.endpoint_url}")

    def stop(self) -> None:
        """Stop moto (SIGTERM, then SIGKILL) and remove its log."""
        if self._process is not None:
            localstack_script.terminate(self._process.pid, STOP_TIMEOUT_S, self._process)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL moto at once; `restart()` brings it back on the same port."""
        if self._process is not None:
            localstack_script.terminate(self._process.pid, 0, self._process)

    def _request(self, method: str, path: str, *, timeout_s: float) -> int | None:
        url = f"{self.endpoint_url}{path}"  # always http://127.0.0.1, never a file: URL
        request = urllib.request.Request(url, method=method)  # noqa: S310 (see above)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (idem)
                status: int = response.status
                return status
        except urllib.error.HTTPError as error:
            error.close()  # an unclosed error response leaks its socket (ResourceWarning)
            return error.code
        except OSError:  # refused, reset or timed out: not answering yet
            return None

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def __repr__(self) -> str:
        """Show the endpoint and the process."""
        pid = self._process.pid if self._process else None
        return f"<MotoServer {self.endpoint_url} pid={pid} running={self.is_running()}>"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A moto server for the whole session; tests create their own queues (or call reset())."""
    server = MotoServer()
    try:
        server.restart()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def localstack_server() -> Iterator[SqsServer]:
    """A LocalStack server for the whole session, installed on first use (40-90 s, then cached).

    Started with ``fast=True`` (no per-queue CloudWatch metrics). Fails, never skips, when
    LocalStack cannot be installed or started.
    """
    try:
        localstack_script.install()
        server: SqsServer = localstack_script.start(fast=True)
    except (localstack_script.LocalStackError, OSError) as error:
        pytest.fail(
            f"LocalStack could not be installed or started by {LOCALSTACK_SCRIPT}: {error}",
            pytrace=False,
        )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and us-east-1, ignoring the developer's own AWS configuration."""
    for name in list(os.environ):
        if name.startswith(("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

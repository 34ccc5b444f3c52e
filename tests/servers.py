"""Real SQS-compatible servers on 127.0.0.1 for the test suite: moto and LocalStack, as fixtures.

Both run as subprocesses that tests can kill and bring back on the same port (fault tests), and both
are checked to listen on loopback only; both are `qworker._process.ManagedProcess`es (started in
their own session, stopped by PID). LocalStack comes from ``qworker.localstack`` (the launcher
``scripts/localstack.py`` runs), which installs it in its own virtualenv; if it cannot be installed
or started, its fixture FAILS, so CI goes red instead of skipping. A restarted server starts empty:
neither keeps state across restarts.

``tests/conftest.py`` imports the fixtures: ``moto_server``, ``localstack_server`` (session-scoped)
and ``aws_env``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, final

import pytest

from qworker import localstack
from qworker._loopback import HOST, check_loopback_only, free_port, listening_addresses
from qworker._process import ManagedProcess, ProcessError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "HOST",
    "MotoServer",
    "SqsServer",
    "aws_env",
    "free_port",
    "listening_addresses",
    "localstack_server",
    "moto_server",
]

MOTO_START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 5.0

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


@final
class MotoServer:
    """moto's server mode (``python -m moto.server``) on 127.0.0.1, in a subprocess."""

    def __init__(self, port: int | None = None) -> None:
        """Describe a server on `port` (a free one when None); `restart()` starts it."""
        self.port = port or free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="qworker-moto-"))
        self.log_path = self.data_dir / "moto.log"
        self._process = ManagedProcess(
            [sys.executable, "-c", _MOTO_LAUNCHER, "-H", HOST, "-p", str(self.port)],
            log_path=self.log_path,
            name="moto",
        )

    @property
    def endpoint_url(self) -> str:
        """The URL AWS clients take as ``endpoint_url``."""
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The moto process id."""
        return self._process.pid

    def is_running(self) -> bool:
        """Return whether the process is alive."""
        return self._process.is_running()

    def restart(self, timeout_s: float = MOTO_START_TIMEOUT_S) -> None:
        """(Re)start moto on the same port, wait until it answers, check it is on loopback only."""
        if self.is_running():
            self.kill()
        pid = self._process.start()
        try:
            self._process.wait_ready(self._answering, timeout_s=timeout_s, what="answering")
            check_loopback_only(pid)
        except BaseException:
            self.kill()
            raise

    def _answering(self) -> bool:
        # Ask only once it listens itself: the port may be someone else's.
        listening = self.port in listening_addresses(self._process.pid).get(HOST, set())
        return listening and self._request("GET", "/moto-api/data.json", timeout_s=1) is not None

    def reset(self) -> None:
        """Delete every resource (queues, messages) through ``/moto-api/reset``."""
        if self._request("POST", "/moto-api/reset", timeout_s=10) != 200:
            raise RuntimeError(f"moto reset failed at {self.endpoint_url}")

    def stop(self) -> None:
        """Stop moto (SIGTERM, then SIGKILL) and remove its log."""
        self._process.stop(STOP_TIMEOUT_S)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL moto at once; `restart()` brings it back on the same port."""
        self._process.kill()

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

    def __repr__(self) -> str:
        """Show the endpoint and the process."""
        pid = self._process.pid if self._process.started else None
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
        localstack.install()
        server: SqsServer = localstack.start(fast=True)
    except (ProcessError, OSError) as error:
        pytest.fail(f"LocalStack could not be installed or started: {error}", pytrace=False)
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

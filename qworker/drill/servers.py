"""The server a drill runs on: LocalStack (started and stopped here), a given endpoint, or moto."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final, Protocol

from qworker.drill.config import DrillConfig, DrillError
from qworker.exceptions import ConfigError
from qworker.local import EmbeddedSqs

LOCALSTACK_SCRIPT: Final = Path(__file__).resolve().parents[2] / "scripts" / "localstack.py"


class _Server(Protocol):
    @property
    def endpoint_url(self) -> str: ...

    @property
    def pid(self) -> int: ...

    def stop(self) -> None: ...


def _localstack_script() -> Any:  # noqa: ANN401 (a module loaded from a file path)
    """Load `scripts/localstack.py` (not a package, and it must not shadow `localstack`)."""
    name = "qworker_localstack_script"
    if (loaded := sys.modules.get(name)) is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(name, LOCALSTACK_SCRIPT)
    if not LOCALSTACK_SCRIPT.exists() or spec is None or spec.loader is None:
        raise ConfigError(
            f"{LOCALSTACK_SCRIPT} not found: run the drill from a qworker source checkout, or "
            "give --endpoint-url of a running LocalStack, or --embedded"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its classes look their module up while being defined
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def serve(
    config: DrillConfig, log_dir: Path, say: Callable[[str], None]
) -> AsyncIterator[tuple[str, str]]:
    """Yield (endpoint, description) of the server the drill runs on; stop it if we started it."""
    if config.endpoint_url is not None:
        yield config.endpoint_url, f"the server at {config.endpoint_url}"
        return
    if config.embedded:
        # werkzeug logs every request at INFO unless logging is configured: keep its warnings only.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        embedded = EmbeddedSqs(port=0, state_file=None)
        endpoint = await asyncio.to_thread(embedded.start)
        try:
            yield endpoint, f"moto (embedded, in this process) at {endpoint}"
        finally:
            await asyncio.to_thread(embedded.stop)
        return
    script = _localstack_script()
    say(f"LocalStack {script.VERSION}: installing in {script.venv_dir()} if missing (1-2 min)")
    data_dir = Path(tempfile.mkdtemp(prefix="qworker-drill-localstack-"))
    try:
        await asyncio.to_thread(script.install)
        server: _Server = await asyncio.to_thread(_start_localstack, script, data_dir)
    except script.LocalStackError as exc:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise DrillError(f"LocalStack did not start: {exc}") from None
    try:
        yield (
            server.endpoint_url,
            f"LocalStack {script.VERSION} (pid {server.pid}) at {server.endpoint_url}",
        )
    finally:
        await asyncio.to_thread(server.stop)
        say(f"stopped LocalStack (pid {server.pid})")
        with contextlib.suppress(OSError):
            shutil.copyfile(data_dir / "localstack.log", log_dir / "localstack.log")
        shutil.rmtree(data_dir, ignore_errors=True)


def _start_localstack(script: Any, data_dir: Path) -> _Server:  # noqa: ANN401 (a loaded module)
    """Start LocalStack with its own temporary directory.

    Where LocalStack believes it runs in a container (as here), it keeps its CloudWatch database
    in `$TMPDIR/localstack/state`, whatever FILESYSTEM_ROOT says, and deletes `$TMPDIR/localstack`
    when it stops: two instances sharing `/tmp` delete each other's metrics. A private TMPDIR
    keeps this instance's metrics its own.
    """
    tmp = data_dir / "tmp"
    tmp.mkdir()
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)  # start() passes our environment on; restored below
    try:
        server: _Server = script.start(fast=True, data_dir=data_dir)
    finally:
        if saved is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved
    return server

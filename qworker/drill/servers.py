"""The server a drill runs on: LocalStack (started and stopped here), a given endpoint, or moto."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from qworker import localstack
from qworker.drill.config import DrillConfig, DrillError
from qworker.local import EmbeddedSqs


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
    if not localstack.installed():
        say(f"LocalStack {localstack.VERSION}: installing in {localstack.venv_dir()} (1-2 min)")
    # Its own data directory, and so its own TMPDIR (see qworker.localstack.start): two LocalStacks
    # sharing one would delete each other's CloudWatch metrics when one stops.
    data_dir = Path(
        tempfile.mkdtemp(prefix="qworker-drill-localstack-", dir=localstack.scratch_root())
    )
    try:
        await asyncio.to_thread(localstack.install)
        server = await asyncio.to_thread(localstack.start, fast=True, data_dir=data_dir)
    except localstack.LocalStackError as exc:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise DrillError(f"LocalStack did not start: {exc}") from None
    try:
        yield (
            server.endpoint_url,
            f"LocalStack {localstack.VERSION} (pid {server.pid}) at {server.endpoint_url}",
        )
    finally:
        await asyncio.to_thread(server.stop)
        say(f"stopped LocalStack (pid {server.pid})")
        with contextlib.suppress(OSError):
            shutil.copyfile(server.log_path, log_dir / "localstack.log")
        shutil.rmtree(data_dir, ignore_errors=True)

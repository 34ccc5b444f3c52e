"""`qworker run` and `qworker send`: the worker and the producer on the command line.

Every setting of `QWorkerSettings` is a flag of `qworker run` (`concurrency` → `--concurrency`);
flags win over `QWORKER_*` variables, which win over defaults. `qworker.cli` imports this module
only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import os
import socket
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, cast

from qworker import observability, shutdown, tracing
from qworker._aws import AwsTarget
from qworker.app import QWorker
from qworker.exceptions import ConfigError
from qworker.health_file import default_health_file
from qworker.local import EmbeddedSqs, create_queue_with_dlq, read_state
from qworker.logs import configure_logging
from qworker.middleware import Middleware
from qworker.payloads import PayloadStore, open_s3_client
from qworker.producer import send_bodies
from qworker.role import Identity, fetch_ecs_task_id
from qworker.settings import QWorkerSettings, load_settings
from qworker.signals import handle_signals
from qworker.transport import SqsTransport
from qworker.worker import Worker, open_sqs_client

__all__ = ["register_run", "register_send", "serve"]

_CONNECTION_FIELDS: Final = ("queue_url", "queue_name", "endpoint_url", "region")
_PAYLOAD_FIELDS: Final = ("payload_bucket", "payload_threshold_bytes", "payload_always")


def _add_setting_flags(
    parser: argparse.ArgumentParser, fields: Sequence[str] | None = None
) -> None:
    for name, info in QWorkerSettings.model_fields.items():
        if fields is not None and name not in fields:
            continue
        flag = f"--{name.replace('_', '-')}"
        help_text = info.description or ""
        if info.annotation in (bool, bool | None):
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, metavar=name.upper(), help=help_text)


def _settings(args: argparse.Namespace) -> QWorkerSettings:
    given = {k: getattr(args, k) for k in QWorkerSettings.model_fields if hasattr(args, k)}
    return load_settings(**given)


def _identity(settings: QWorkerSettings, app_name: str) -> Identity:
    service = settings.service if "service" in settings.model_fields_set else app_name
    return Identity(
        service=service,
        role=settings.deployment_role.value,
        version=settings.version,
        task_id=fetch_ecs_task_id(settings.ecs_container_metadata_uri_v4),
    )


# -- run ------------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.reload:
        from qworker.reload import run_reloader  # noqa: PLC0415 (development only)

        given: dict[str, object] = {k: getattr(args, k, None) for k in QWorkerSettings.model_fields}
        given["middleware"] = args.middleware or None
        return run_reloader(args.module, given, grace_s=settings.shutdown_grace_s)
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        # Console scripts do not put the working directory on sys.path; handler modules live there.
        sys.path.insert(0, cwd)
    app = QWorker.from_module(args.module)
    for spec in args.middleware or ():
        app.middleware(load_middleware(spec))
    identity = _identity(settings, app.name)
    _check_health_file(settings, identity)
    _check_health_port(settings)
    configure_logging(identity, level=settings.log_level, fmt=settings.log_format)
    return shutdown.run(
        lambda guard: serve(app, settings, identity, guard=guard),
        grace_s=settings.shutdown_grace_s,
    )


def load_middleware(spec: str) -> Middleware:
    """Import `module:attribute` for `--middleware`: a middleware object, or a class to call.

    Raises:
        ConfigError: It cannot be imported or is not callable; the message names `--middleware`.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"invalid setting --middleware: {spec!r} is not module:attribute")
    try:
        value: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            value = getattr(value, part)
    except Exception as exc:  # noqa: BLE001 (any import failure is one line naming the flag)
        raise ConfigError(
            f"invalid setting --middleware: cannot load {spec!r}: {type(exc).__name__}: {exc}"
        ) from None
    if isinstance(value, type):
        value = value()  # a class: its instance is the middleware
    if not callable(value):
        raise ConfigError(f"invalid setting --middleware: {spec!r} is not callable")
    return cast("Middleware", value)


def _check_health_file(settings: QWorkerSettings, identity: Identity) -> None:
    """Fail at start-up when the health file cannot be written (ECS would see no health at all).

    The report is written to a temporary file next to it, then renamed over it: the directory must
    take a new file, and the path must not be a directory.

    Raises:
        ConfigError: It cannot; the message names the setting.
    """
    path = Path(settings.health_file or default_health_file(identity.role))
    where = "QWORKER_HEALTH_FILE (--health-file)"
    if path.is_dir():
        raise ConfigError(f"invalid setting {where}: {path} is a directory")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"invalid setting {where}: {path.parent} is not a directory")
    probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"invalid setting {where}: cannot write {path} ({reason})") from None


def _check_health_port(settings: QWorkerSettings) -> None:
    """Fail at start-up when the health endpoint's port is taken (0 picks a free one).

    Raises:
        ConfigError: It is; the message names the setting.
    """
    port = settings.health_port
    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(
                f"invalid setting QWORKER_HEALTH_PORT (--health-port): cannot listen on "
                f"127.0.0.1:{port} ({reason})"
            ) from None


async def serve(
    app: QWorker,
    settings: QWorkerSettings,
    identity: Identity,
    *,
    guard: shutdown.ShutdownGuard | None = None,
) -> None:
    """Run `app` until a stop signal, on the embedded server when no queue is configured.

    With a `guard`, a stop signal starts its countdown (see `qworker.shutdown`).
    """
    async with (
        _embedded(app, settings) as (endpoint_url, settings_used),
        observability.build(
            settings_used.observability_config(),
            identity,
            endpoint_url=endpoint_url,
            local=endpoint_url is not None and settings.use_embedded,
        ) as obs,
    ):
        worker = Worker(
            app,
            settings_used.worker_config(),
            identity=identity,
            endpoint_url=endpoint_url,
            local=endpoint_url is not None and settings.use_embedded,
            middleware=obs.middleware,
            sinks=obs.sinks,
        )
        if guard is not None:
            guard.watch(worker)
        with (
            handle_signals(obs.stop),
            guard.armed_by_signals() if guard is not None else contextlib.nullcontext(),
        ):
            await obs.run(worker)


@contextlib.asynccontextmanager
async def _embedded(
    app: QWorker, settings: QWorkerSettings
) -> AsyncIterator[tuple[str | None, QWorkerSettings]]:
    if not settings.use_embedded:
        yield None, settings
        return
    server = EmbeddedSqs(port=settings.local_port)
    endpoint = await asyncio.to_thread(server.start)
    try:
        default_queue = settings.queue_name or app.name
        names = [q or default_queue for q in app.handlers]
        async with open_sqs_client(settings, endpoint_url=endpoint, local=True) as client:
            for name in names:
                await create_queue_with_dlq(
                    client, name, max_receive_count=settings.max_receive_count
                )
        server.record_queues(names)
        print(  # noqa: T201 (a hint for the person at the terminal)
            f"qworker: embedded SQS on {endpoint}; queues {', '.join(names)}. Send with:\n"
            f"  qworker send --queue-name {names[0]} '<json body>'",
            file=sys.stderr,
        )
        yield endpoint, settings.model_copy(update={"queue_name": default_queue})
    finally:
        await asyncio.to_thread(server.stop)


# -- send -----------------------------------------------------------------------------------------


def _bodies(args: argparse.Namespace) -> Iterator[str]:
    yield from args.bodies
    if args.file:
        stream = sys.stdin if args.file == "-" else Path(args.file).open(encoding="utf-8")  # noqa: SIM115 (closed below)
        try:
            yield from (line.rstrip("\n") for line in stream if line.strip())
        finally:
            if stream is not sys.stdin:
                stream.close()
    elif not args.bodies and not sys.stdin.isatty():
        yield from (line.rstrip("\n") for line in sys.stdin if line.strip())


def _cmd_send(args: argparse.Namespace) -> int:
    settings = _settings(args)
    endpoint = settings.endpoint_url
    queue_name = settings.queue_name
    if endpoint is None and settings.queue_url is None:
        state = read_state()
        if state is not None and not _listening(state.endpoint_url):
            state = None  # left behind by a server that did not stop cleanly
        if state is not None:
            endpoint = state.endpoint_url
            if queue_name is None and len(state.queues) == 1:
                queue_name = state.queues[0]
            elif queue_name is None and state.queues:
                raise ConfigError(
                    f"which queue? the local server has {', '.join(state.queues)}: "
                    "pass --queue-name"
                )
        elif queue_name is None:
            raise ConfigError(
                "no local server is running; start one with `qworker run` (or name a queue with "
                "--queue-name / --queue-url)"
            )
    if settings.queue_url is None and queue_name is None:
        raise ConfigError(
            "which queue? set QWORKER_QUEUE_NAME or QWORKER_QUEUE_URL (--queue-name / --queue-url)"
        )
    attributes = dict(a.split("=", 1) for a in args.attribute)
    bodies = list(_bodies(args))
    if not bodies:
        raise ConfigError(
            "nothing to send: give bodies as arguments, --file FILE, or lines on stdin"
        )
    try:
        sent = asyncio.run(
            _send(
                settings,
                endpoint,
                queue_name,
                bodies,
                attributes,
                args.group_id,
                args.delay_s,
                args.message_type,
            )
        )
    except ValueError as exc:  # an option or body SQS cannot take: nothing was sent
        raise ConfigError(f"nothing sent: {exc}") from None
    print(f"sent {sent} message(s)", file=sys.stderr)  # noqa: T201 (the command's answer)
    return 0


def _listening(endpoint_url: str) -> bool:
    """Whether something accepts connections at the endpoint's host and port."""
    parts = urllib.parse.urlsplit(endpoint_url)
    if parts.hostname is None or parts.port is None:
        return True  # not one the embedded server wrote: let the client say what is wrong
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1.0):
            return True
    except OSError:
        return False


async def _send(  # noqa: PLR0917 (a private call with positional plumbing)
    settings: QWorkerSettings,
    endpoint: str | None,
    queue_name: str | None,
    bodies: list[str],
    attributes: dict[str, str],
    group_id: str | None,
    delay_s: int,
    message_type: str | None = None,
) -> int:
    local = endpoint is not None and settings.endpoint_url is None
    payloads = PayloadStore(
        functools.partial(
            open_s3_client,
            AwsTarget(settings.region, endpoint or settings.endpoint_url, local=local),
        ),
        bucket=settings.payload_bucket,
        threshold_bytes=settings.payload_threshold_bytes,
        always=settings.payload_always,
    )
    try:
        async with open_sqs_client(settings, endpoint_url=endpoint, local=local) as client:
            transport = await SqsTransport.open(client, name=queue_name, url=settings.queue_url)
            with tracing.send_span(
                transport.queue_name,
                identity=Identity(
                    service=settings.service,
                    role=settings.deployment_role.value,
                    version=settings.version,
                ),
                exporter=settings.otel_exporter,
                sample_ratio=settings.otel_sample_ratio,
            ):
                return await send_bodies(
                    transport,
                    bodies,
                    attributes=attributes,
                    group_id=group_id,
                    delay_s=delay_s,
                    message_type=message_type,
                    payloads=payloads,
                )
    finally:
        await payloads.aclose()


# -- registration ---------------------------------------------------------------------------------


def register_run(sub: Any) -> None:  # noqa: ANN401 (argparse's subparsers action is private)
    """Add `qworker run` to the CLI."""
    run = sub.add_parser("run", help="run a handler module's worker")
    run.add_argument("module", help="the handler module, e.g. handlers.orders")
    run.add_argument(
        "--reload",
        action="store_true",
        help="development: restart the worker (drained) when a .py file under the working "
        "directory changes; needs qworker[reload]; refused in a container",
    )
    run.add_argument(
        "--middleware",
        action="append",
        metavar="MODULE:ATTRIBUTE",
        help="add a middleware around every handler call (qworker.middleware), after the app's "
        "own; repeatable, the first outermost",
    )
    _add_setting_flags(run)
    run.set_defaults(func=_cmd_run)


def register_send(sub: Any) -> None:  # noqa: ANN401 (argparse's subparsers action is private)
    """Add `qworker send` to the CLI."""
    send = sub.add_parser("send", help="put messages on a queue")
    send.add_argument("bodies", nargs="*", help="message bodies")
    send.add_argument("--file", help="a file with one body per line ('-': stdin)")
    send.add_argument("--attribute", action="append", default=[], metavar="NAME=VALUE")
    send.add_argument("--group", "--group-id", dest="group_id", help="FIFO message group id")
    send.add_argument(
        "--type", dest="message_type", help="the 'type' message attribute (routes to a handler)"
    )
    send.add_argument("--delay-s", type=int, default=0, help="delay before the messages show")
    _add_setting_flags(send, (*_CONNECTION_FIELDS, *_PAYLOAD_FIELDS))
    send.set_defaults(func=_cmd_send)

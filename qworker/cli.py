"""The command line: `qworker run`, `qworker send`, and the commands other modules register.

Every setting of `QWorkerSettings` is a flag of `qworker run` (`concurrency` → `--concurrency`);
flags win over `QWORKER_*` variables, which win over defaults. A bad setting prints one line naming
it and exits with code 2.

Commands are registered lazily: `COMMANDS` names each one, its help line and the module that adds
its parser and runs it. `main` imports only the module of the command it runs (every other command
gets a stub parser carrying its help line, so `qworker --help` still lists them all); the health
check, `qworker health`, therefore imports nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple, final

from qworker.exceptions import ConfigError, TransportError

__all__ = ["COMMANDS", "Command", "build_parser", "main"]

EXIT_CONFIG: Final = 2


class Command(NamedTuple):
    """A `qworker` subcommand.

    Attributes:
        name: What follows `qworker`.
        help: Its line in `qworker --help` (the same as its module's `add_parser` help).
        register: `module:function` adding its full parser (imported only when needed).
    """

    name: str
    help: str
    register: str

    def load(self) -> Callable[[Any], None]:
        """Import the module that registers the command; return its register function."""
        module, _, function = self.register.partition(":")
        registered: Callable[[Any], None] = getattr(
            importlib.import_module(module), function or "register"
        )
        return registered


COMMANDS: Final = (
    Command("run", "run a handler module's worker", "qworker.worker_cli:register_run"),
    Command("send", "put messages on a queue", "qworker.worker_cli:register_send"),
    Command("canary", "judge the canary", "qworker.canary.cli:register"),
    Command(
        "health",
        "exit 0 if the worker(s) on this host are healthy, 1 if not (the ECS health check)",
        "qworker.health_file:register",
    ),
    Command("dlq", "look at and redrive dead-letter queues", "qworker.dlq.cli:register"),
    Command("queue", "create queues", "qworker.queue_cli:register"),
    Command(
        "drill",
        "run a local canary drill: two workers, traffic, the judge, rollback or promotion",
        "qworker.drill.cli:register",
    ),
)


def _chosen(argv: Sequence[str]) -> str | None:
    """The command `argv` names: its first word that is not an option.

    The top level has no option taking a value, so that word is the command.
    """
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of the `qworker` command.

    Args:
        argv: The arguments it will parse: only the command they name gets its full parser (the
            others a stub with their help line). `None`: every command's full parser.
    """
    parser = argparse.ArgumentParser(
        prog="qworker", description="asyncio SQS workers with a judged canary"
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="show the installed version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = None if argv is None else _chosen(argv)
    for command in COMMANDS:
        if argv is None or command.name == chosen:
            command.load()(sub)
        else:
            sub.add_parser(command.name, help=command.help)
    return parser


@final
class _Version(argparse.Action):
    """`--version`: reads the package metadata only when asked (that import costs ~30 ms)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,  # noqa: ARG002 (argparse's signature)
        values: object,  # noqa: ARG002 (argparse's signature)
        option_string: str | None = None,  # noqa: ARG002 (argparse's signature)
    ) -> None:
        sys.stdout.write(f"qworker {_package_version()}\n")
        parser.exit()


def _package_version() -> str:
    """The installed package's version (from its metadata; a bare source tree has none)."""
    import importlib.metadata  # noqa: PLC0415 (slow to import; only `--version` needs it)

    try:
        return importlib.metadata.version("qworker")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _one_line(exc: BaseException) -> str:
    """The error on one line (a library's message may span several)."""
    return " ".join(str(exc).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `qworker` command; return its exit code."""
    given = sys.argv[1:] if argv is None else argv
    args = build_parser(given).parse_args(given)
    try:
        try:
            return int(args.func(args))
        except BaseExceptionGroup as group:
            # Task groups wrap one failure in (nested) groups; report it as itself.
            from qworker.concurrency import leaves  # noqa: PLC0415 (asyncio: not for every command)

            found = leaves(group)
            raise (found[0] if len(found) == 1 else group) from None
    except ConfigError as exc:
        print(f"qworker: error: {_one_line(exc)}", file=sys.stderr)  # noqa: T201 (the answer)
        return EXIT_CONFIG
    except TransportError as exc:
        print(f"qworker: error: {_one_line(exc)}", file=sys.stderr)  # noqa: T201 (the answer)
        return 1
    except Exception as exc:
        if not _profile_not_found(exc):
            raise
        print(  # noqa: T201 (the command's answer)
            f"qworker: error: invalid setting AWS_PROFILE: {_one_line(exc)}", file=sys.stderr
        )
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _profile_not_found(exc: Exception) -> bool:
    """Whether `exc` is botocore's unknown AWS profile (only a command that loaded it raises it)."""
    errors = sys.modules.get("botocore.exceptions")
    return errors is not None and isinstance(exc, errors.ProfileNotFound)

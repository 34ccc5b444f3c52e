"""The health file and `qworker health`, on the standard library alone.

The ECS health check runs `qworker health` every 30 s, so this module imports nothing beyond the
standard library (no AWS SDK, no OpenTelemetry, no settings model): one probe costs the interpreter
start and a file read. `qworker.health` writes the file; this module defines its format, where it
lives, how a reader judges it, and the command.

The file is one per worker process: `QWORKER_HEALTH_FILE` names it, by default
`<temp dir>/qworker-health/<role>-<pid>.json`. Without a file named, `qworker health` reads every
running worker's file in that directory and exits 0 when all are healthy, 1 when not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Final, final

__all__ = [
    "EXIT_HEALTHY",
    "EXIT_UNHEALTHY",
    "HEALTH_FILE_ENV",
    "STALE_INTERVALS",
    "HealthReport",
    "default_health_dir",
    "default_health_file",
    "evaluate",
    "health_file_setting",
    "read_report",
    "register",
    "running_workers_files",
    "write_report",
]

EXIT_HEALTHY: Final = 0
EXIT_UNHEALTHY: Final = 1
STALE_INTERVALS: Final = 3
"""A health file older than this many write intervals is stale."""
HEALTH_FILE_ENV: Final = "QWORKER_HEALTH_FILE"
"""The variable of the `health_file` setting (read case-insensitively, as the settings are)."""


def default_health_dir() -> Path:
    """Where workers write their health files when the settings name none."""
    return Path(_temp_dir()) / "qworker-health"


def _temp_dir() -> str:
    """The temporary directory, as `tempfile.gettempdir()` finds it.

    A process that imported `tempfile` asks it. Otherwise `tempfile` is imported only when no
    candidate from `TMPDIR`, `TEMP`, `TMP` or `/tmp` is a
    writable directory (it imports `random`, `shutil` and the compressors: a quarter of a probe).
    """
    loaded = sys.modules.get("tempfile")
    if loaded is not None:  # already paid for (a worker): it decides, `tempfile.tempdir` included
        return str(loaded.gettempdir())
    for name in ("TMPDIR", "TEMP", "TMP"):
        found = os.environ.get(name)
        if found:
            if _usable(found):
                return os.path.abspath(found)  # noqa: PTH100 (str in, str out, as tempfile)
            break  # tempfile would try the next; let it decide the odd cases
    else:
        if _usable("/tmp"):  # noqa: S108 (tempfile's first fixed candidate on POSIX)
            return "/tmp"  # noqa: S108
    import tempfile  # noqa: PLC0415 (rare path; see above)

    return tempfile.gettempdir()


def _usable(directory: str) -> bool:
    return os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK)  # noqa: PTH112


def default_health_file(role: str, pid: int | None = None) -> Path:
    """The health file of this worker process (of `role`) when the settings name none.

    One file per process: two workers on one host never overwrite each other's health.
    """
    return default_health_dir() / f"{role}-{os.getpid() if pid is None else pid}.json"


def health_file_setting(given: str | None = None) -> str | None:
    """The `health_file` setting: `given` (a flag), else `QWORKER_HEALTH_FILE`, else none.

    Empty values count as not given, as in `qworker.settings.load_settings`.
    """
    if given:
        return given
    for name, value in os.environ.items():
        if name.upper() == HEALTH_FILE_ENV and value:
            return value
    return None


@final
class HealthReport:
    """One look at the worker's health (immutable; compared by value).

    A plain class rather than a dataclass: `dataclasses` imports `inspect`, which would double what
    a probe imports.

    Attributes:
        time_s: When (epoch seconds).
        live: No poll loop is stalled.
        ready: Started, not stopping, not quarantined.
        quarantined: A canary stopped itself (see `qworker.quarantine`).
        problems: Why not live or not ready, one short line each.
        stale_after_s: How old the report may grow before a reader calls it stale.
        queues: Per queue: its counters and seconds since its poll loop last made progress.
    """

    __slots__ = ("live", "problems", "quarantined", "queues", "ready", "stale_after_s", "time_s")
    _FIELDS: Final = (
        "time_s",
        "live",
        "ready",
        "quarantined",
        "problems",
        "stale_after_s",
        "queues",
    )

    time_s: float
    live: bool
    ready: bool
    quarantined: bool
    problems: tuple[str, ...]
    stale_after_s: float
    queues: dict[str, dict[str, float]]

    def __init__(  # noqa: PLR0917 (positional, as the dataclass it replaces took them)
        self,
        time_s: float,
        live: bool,  # noqa: FBT001 (a field, positional by design)
        ready: bool,  # noqa: FBT001 (a field, positional by design)
        quarantined: bool = False,  # noqa: FBT001, FBT002 (a field, positional by design)
        problems: tuple[str, ...] = (),
        stale_after_s: float = 30.0,
        queues: dict[str, dict[str, float]] | None = None,
    ) -> None:
        """Create a report; the fields are read-only."""
        values = (
            time_s,
            live,
            ready,
            quarantined,
            problems,
            stale_after_s,
            {} if queues is None else queues,
        )
        for name, value in zip(self._FIELDS, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        """Refuse: a report does not change."""
        raise AttributeError(f"HealthReport is read-only: cannot set {name}")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        """Equal when every field is."""
        if not isinstance(other, HealthReport):
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable dict inside: not hashable

    def __repr__(self) -> str:
        """The fields, as the constructor takes them."""
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS)
        return f"HealthReport({fields})"

    def as_dict(self) -> dict[str, object]:
        """The fields by name."""
        return {name: getattr(self, name) for name in self._FIELDS}

    @property
    def healthy(self) -> bool:
        """Live and not quarantined (what the container health check asks)."""
        return self.live and not self.quarantined

    def to_json(self) -> str:
        """The report as one JSON object."""
        return json.dumps({**self.as_dict(), "healthy": self.healthy, "pid": os.getpid()})

    @classmethod
    def from_json(cls, text: str) -> HealthReport:
        """Read a report written by `to_json`.

        Raises:
            ValueError: Not a report.
        """
        raw = json.loads(text)
        try:
            return cls(
                time_s=float(raw["time_s"]),
                live=bool(raw["live"]),
                ready=bool(raw["ready"]),
                quarantined=bool(raw.get("quarantined", False)),
                problems=tuple(str(p) for p in raw.get("problems", ())),
                stale_after_s=float(raw.get("stale_after_s", 30.0)),
                queues=dict(raw.get("queues", {})),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a health report: {exc}") from None


def write_report(path: Path, report: HealthReport) -> None:
    """Write `report` to `path` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(report.to_json(), encoding="utf-8")
    partial.replace(path)


def read_report(path: Path) -> HealthReport:
    """Read the report at `path`.

    Raises:
        OSError: No file.
        ValueError: Not a report.
    """
    return HealthReport.from_json(path.read_text(encoding="utf-8"))


def evaluate(
    report: HealthReport,
    *,
    now_s: float,
    require_ready: bool = False,
    max_age_s: float | None = None,
) -> list[str]:
    """Return why `report` is unhealthy (empty: healthy).

    Args:
        report: What the worker wrote.
        now_s: Epoch seconds now.
        require_ready: Also require readiness.
        max_age_s: Older reports are stale (default: the report's own `stale_after_s`).
    """
    age_s = now_s - report.time_s
    limit = report.stale_after_s if max_age_s is None else max_age_s
    if age_s > limit:
        return [f"health file is {age_s:.0f} s old (limit {limit:g} s): the worker is not running"]
    if report.healthy and (report.ready or not require_ready):
        return []
    return list(report.problems) or ["not ready"]


def running_workers_files(directory: Path | None = None) -> list[Path]:
    """The health files in `directory` (default: `default_health_dir()`) of running processes.

    A worker that exited leaves its last file behind; its process id no longer runs.
    """
    found: list[Path] = []
    for path in sorted((directory or default_health_dir()).glob("*-*.json")):
        pid = path.stem.rsplit("-", 1)[-1]
        if pid.isdigit() and _running(int(pid)):
            found.append(path)
    return found


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it runs
    return True


# -- `qworker health` -------------------------------------------------------------------------

HELP: Final = "exit 0 if the worker(s) on this host are healthy, 1 if not (the ECS health check)"


def register(subparsers: Any) -> None:  # noqa: ANN401 (argparse's subparsers action is private)
    """Add `qworker health` to the CLI."""
    parser = subparsers.add_parser(
        "health",
        help=HELP,
        description="Read the worker's health file; exit 0 when healthy, 1 when not. Without a "
        "file named, every running worker's file in the default directory is read.",
    )
    parser.add_argument("--health-file", help="the file (default: from QWORKER_HEALTH_FILE)")
    parser.add_argument("--ready", action="store_true", help="also require readiness")
    parser.add_argument("--max-age-s", type=float, help="older files are stale")
    parser.set_defaults(func=_cmd_health)


def _cmd_health(args: argparse.Namespace) -> int:
    named = health_file_setting(args.health_file)
    if named:
        paths = [Path(named)]
    else:
        paths = running_workers_files()
        if not paths:
            sys.stdout.write(
                f"unhealthy: no running worker's health file in {default_health_dir()}\n"
            )
            return EXIT_UNHEALTHY
    unhealthy = 0
    for path in paths:
        label = f"{path}: " if len(paths) > 1 else ""
        try:
            report = read_report(path)
        except (OSError, ValueError) as exc:
            sys.stdout.write(f"unhealthy: no readable health file at {path}: {exc}\n")
            unhealthy += 1
            continue
        problems = evaluate(
            report, now_s=time.time(), require_ready=args.ready, max_age_s=args.max_age_s
        )
        if problems:
            sys.stdout.write(f"unhealthy: {label}{'; '.join(problems)}\n")
            unhealthy += 1
        else:
            sys.stdout.write(f"healthy{': ' + str(path) if label else ''}\n")
    return EXIT_UNHEALTHY if unhealthy else EXIT_HEALTHY

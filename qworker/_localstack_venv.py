"""LocalStack's own virtualenv for `qworker.localstack`: the pins, where it lives, installing it.

Its pins clash with aiobotocore's botocore, so LocalStack gets a virtualenv of its own under the
user's cache directory (``~/.cache/qworker/localstack-<version>``), made once with a Python 3.11
and stamped with the requirements it holds. Stdlib-only, like `qworker.localstack`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

from qworker._process import ProcessError, read_text, tail

__all__ = [
    "CACHE_DIR",
    "PYTHON_VERSION",
    "REQUIREMENTS",
    "VERSION",
    "LocalStackError",
    "install",
    "installed",
    "venv_dir",
]

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
CACHE_DIR: Final = Path.home() / ".cache" / "qworker"
_STAMP: Final = "qworker-requirements.txt"


class LocalStackError(ProcessError):
    """LocalStack could not be installed, started or stopped."""


def venv_dir() -> Path:
    """Return LocalStack's virtualenv: ``$QWORKER_LOCALSTACK_VENV`` or a per-version cache dir."""
    configured = os.environ.get("QWORKER_LOCALSTACK_VENV")
    return Path(configured) if configured else CACHE_DIR / f"localstack-{VERSION}"


def installed(venv: Path | None = None) -> bool:
    """Whether LocalStack's virtualenv holds exactly the pinned requirements."""
    return read_text((venv or venv_dir()) / _STAMP) == _wanted()


def _wanted() -> str:
    return "\n".join((f"python {PYTHON_VERSION}", *REQUIREMENTS)) + "\n"


def install(venv: Path | None = None) -> Path:
    """Create LocalStack's own virtualenv and install it; a no-op when the stamp matches.

    Args:
        venv: Where to install; defaults to `venv_dir()`.

    Returns:
        The virtualenv's directory.

    Raises:
        LocalStackError: No Python 3.11 was found, or pip failed (the message ends with its log).
    """
    venv = venv or venv_dir()
    if installed(venv):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Two test sessions may install at once: the second waits, then finds the stamp.
    with (venv.parent / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not installed(venv):
            _create(venv)
            (venv / _STAMP).write_text(_wanted())
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
        found = subprocess.run(probe, capture_output=True, text=True, check=False)  # noqa: S603
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
        result = subprocess.run(  # noqa: S603 (venv and pip, no shell)
            command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False
        )
    if result.returncode:
        raise LocalStackError(f"{' '.join(command)} failed:\n{tail(log_path)}")

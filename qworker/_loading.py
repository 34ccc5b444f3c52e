"""Loading the app a handler module defines, for `QWorker.from_module` (`qworker run <module>`).

A module defines a `QWorker` object, or a plain module-level `handle` function that gets an app of
its own. Whatever goes wrong while importing the module (not found, a syntax error, an exception
at import) becomes one `HandlerNotFound` line naming the module, file and line.
"""

from __future__ import annotations

import importlib
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from qworker.exceptions import ConfigError, HandlerNotFound

if TYPE_CHECKING:
    from qworker.app import QWorker

__all__ = ["load_app"]


def load_app(module_name: str, app_type: type[QWorker], make: Callable[[str], QWorker]) -> QWorker:
    """The one `app_type` object the module defines, or `make(name)` wrapping its `handle`.

    Raises:
        HandlerNotFound: The module cannot be imported, or has no handler, or several apps.
        HandlerSignatureError: `handle` cannot take a message.
    """
    module = _import(module_name)
    apps = [v for v in vars(module).values() if isinstance(v, app_type)]
    if len(apps) == 1:
        return apps[0]
    if len(apps) > 1:
        raise HandlerNotFound(f"module {module_name!r} defines {len(apps)} QWorker apps")
    handle = getattr(module, "handle", None)
    if handle is None:
        raise HandlerNotFound(
            f"module {module_name!r} has no QWorker app and no module-level handle() function"
        )
    app = make(module_name.rsplit(".", 1)[-1])
    app.handler(handle)
    return app


def _import(module_name: str) -> types.ModuleType:
    """Import a handler module; any failure becomes one line naming the module, file and line."""
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise HandlerNotFound(
            f"{module_name!r} is not a module name: give a dotted import path, e.g. handlers.orders"
        )
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and not _is_prefix(exc.name, module_name):
            # The module exists but imports something that does not.
            raise HandlerNotFound(
                f"handler module {module_name!r} failed at import{_where(exc)}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        raise HandlerNotFound(f"cannot import handler module {module_name!r}: {exc}") from None
    except ConfigError:
        raise  # a handler registered wrongly says so itself
    except SyntaxError as exc:
        where = f" ({exc.filename}, line {exc.lineno})" if exc.filename else ""
        raise HandlerNotFound(
            f"handler module {module_name!r} has a syntax error{where}: {exc.msg}"
        ) from None
    except BaseException as exc:  # noqa: BLE001 (whatever the module raises is reported)
        raise HandlerNotFound(
            f"handler module {module_name!r} failed at import{_where(exc)}: {_one_line(exc)}"
        ) from None


def _is_prefix(name: str, module_name: str) -> bool:
    """Whether `name` is `module_name` or one of its parent packages."""
    return module_name == name or module_name.startswith(f"{name}.")


def _where(exc: BaseException) -> str:
    """Where an import failed, e.g. ` (handlers.py, line 3; raised at lib.py, line 9)`.

    The handler module's own line comes first; the line that raised follows when it is elsewhere
    (in a module the handler module imports). The import machinery's frames are left out.
    """
    machinery = (str(Path(importlib.__file__).parent), "<frozen", __file__)
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(machinery)
    ]
    if not frames:
        return ""
    own, raised = frames[0], frames[-1]
    where = f"{own.filename}, line {own.lineno}"
    if raised is not own:
        where += f"; raised at {raised.filename}, line {raised.lineno}"
    return f" ({where})"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

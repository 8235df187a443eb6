"""Class-attribute options of the task bases, checked when the task class is created.

``@app.task(base=RetryTask, retry_for=..., max_retries=8)`` makes Celery create a
subclass whose class dict holds the keyword arguments; ``__init_subclass__`` runs
:func:`check_task_class` on it, so an unknown option name or an ill-typed value
raises :class:`~celeryredis.exceptions.ConfigurationError` when the class is
created (for a lazy ``@app.task`` that is when the app is finalized: at the
first use of the task, or when a worker starts) — never first when it runs.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from celeryredis import _celery_compat
from celeryredis.exceptions import ConfigurationError

__all__ = [
    "OptionCheck",
    "as_bool",
    "as_exception_types",
    "as_names",
    "as_non_negative_int",
    "as_optional_bool",
    "as_positive_int",
    "as_seconds",
    "check_task_class",
]

OptionCheck = Callable[[str, Any], None]

# Keys Celery itself puts into a decorated task's class dict (private ones among them,
# hence the shim) and Celery's own task options that are not Task attributes.
_CELERY_CLASS_KEYS: Final = _celery_compat.decorated_class_keys() | frozenset(
    {
        # Celery's autoretry options (read with getattr by add_autoretry_behaviour).
        "autoretry_for",
        "dont_autoretry_for",
        "retry_kwargs",
        "retry_backoff",
        "retry_backoff_max",
        "retry_jitter",
        # Celery's publish options read from the task class (celery/app/task.py,
        # extract_exec_options) that celery.Task does not define itself.
        "queue",
        "routing_key",
        "exchange",
        "delivery_mode",
        "compression",
        "immediate",
        "mandatory",
        # pydantic integration keywords.
        "pydantic_strict",
        "pydantic_context",
        "pydantic_dump_kwargs",
    }
)


def _fail(name: str, expected: str, value: Any) -> ConfigurationError:
    return ConfigurationError(
        f"task option {name}={value!r} is not valid: expected {expected}", setting=name
    )


def as_bool(name: str, value: Any) -> None:
    """Accept True or False."""
    if not isinstance(value, bool):
        raise _fail(name, "True or False", value)


def as_optional_bool(name: str, value: Any) -> None:
    """Accept None, True or False."""
    if value is not None and not isinstance(value, bool):
        raise _fail(name, "None, True or False", value)


def as_seconds(name: str, value: Any) -> None:
    """Accept a finite, non-negative number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(name, "a number of seconds", value)
    if not math.isfinite(value) or value < 0:
        raise _fail(name, "a finite, non-negative number of seconds", value)


def as_non_negative_int(name: str, value: Any) -> None:
    """Accept an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(name, "an integer >= 0", value)


def as_positive_int(name: str, value: Any) -> None:
    """Accept an integer > 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _fail(name, "an integer > 0", value)


def as_exception_types(name: str, value: Any) -> None:
    """Accept a tuple (or list) of exception classes."""
    if isinstance(value, type) and issubclass(value, BaseException):
        raise _fail(name, f"a tuple of exception classes, e.g. ({value.__name__},)", value)
    if not isinstance(value, tuple | list) or not all(
        isinstance(v, type) and issubclass(v, BaseException) for v in value
    ):
        raise _fail(name, "a tuple of exception classes", value)


def as_names(name: str, value: Any) -> None:
    """Accept a tuple (or list) of strings."""
    if isinstance(value, str) or not isinstance(value, tuple | list):
        raise _fail(name, "a tuple of strings", value)
    if not all(isinstance(v, str) and v for v in value):
        raise _fail(name, "a tuple of non-empty strings", value)


def check_task_class(cls: type, options: Mapping[str, OptionCheck]) -> None:
    """Check the options ``cls`` sets in its own class body or decorator keywords.

    Args:
        cls: The task class being created.
        options: Every option of the class's bases, name to checker.

    Raises:
        ConfigurationError: An unknown option name (only for classes created by
            ``@app.task``, whose dict holds exactly the decorator's keywords) or an
            ill-typed value.
    """
    own = cls.__dict__
    for name, value in own.items():
        # Defaults computed by a descriptor (e.g. the app's retry budget) are not values.
        if name in options and not hasattr(type(value), "__get__"):
            options[name](name, value)
    if not _celery_compat.made_by_decorator(own):
        return
    for name in own:
        if name in _CELERY_CLASS_KEYS or name in options:
            continue
        if any(hasattr(base, name) for base in cls.__mro__[1:]):
            continue  # an attribute Celery's Task or a host mixin defines
        known = sorted(set(options) | _CELERY_CLASS_KEYS)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known options: {', '.join(options)}"
        raise ConfigurationError(
            f"task {own.get('name')!r}: unknown option {name!r}; {hint}", setting=name
        )

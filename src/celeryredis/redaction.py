"""Redact sensitive task arguments and summarise arguments for logs (pure, no I/O).

A keyword (or a positional argument bound to a parameter) is sensitive when its
name contains one of the sensitive words, case-insensitively: ``password``,
``token``, ``secret``, ``api_key``, ``authorization`` and any configured extras.
Sensitive values are replaced by ``***`` wherever celeryredis shows arguments:
its log records, the ``argsrepr``/``kwargsrepr`` it sets at publish (which
Celery shows in its own log lines and events), reprs and exception messages.
"""

from __future__ import annotations

import functools
import inspect
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from celeryredis.urls import REDACTED, redact_text

__all__ = [
    "DEFAULT_SENSITIVE_NAMES",
    "is_sensitive",
    "redact_call",
    "summarize_call",
]

#: Words that make an argument name sensitive (matched as case-insensitive substrings).
DEFAULT_SENSITIVE_NAMES: Final = ("password", "token", "secret", "api_key", "authorization")

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlevel = 3


def is_sensitive(name: str, words: Iterable[str] = DEFAULT_SENSITIVE_NAMES) -> bool:
    """True if ``name`` contains one of ``words`` (case-insensitive).

    Example:
        >>> is_sensitive("db_Password"), is_sensitive("user_id")
        (True, False)
    """
    lowered = name.lower()
    return any(word.lower() in lowered for word in words)


def _redact_value(value: Any, words: Sequence[str]) -> Any:
    if isinstance(value, Mapping):
        return {
            k: REDACTED
            if isinstance(k, str) and is_sensitive(k, words)
            else _redact_value(v, words)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v, words) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


@functools.lru_cache(maxsize=4096)
def _positional_names(func: Callable[..., Any]) -> tuple[str, ...]:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return ()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in kinds)


def _parameter_names(func: Callable[..., Any] | None, count: int) -> list[str | None]:
    names: list[str | None] = [None] * count
    if func is None:
        return names
    try:
        positional = _positional_names(func)
    except TypeError:  # an unhashable callable
        return names
    for index in range(min(count, len(positional))):
        names[index] = positional[index]
    return names


def redact_call(
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    *,
    words: Sequence[str] = DEFAULT_SENSITIVE_NAMES,
    func: Callable[..., Any] | None = None,
) -> tuple[tuple[Any, ...], dict[str, Any], bool]:
    """Return copies of ``args`` and ``kwargs`` with sensitive values replaced by ``***``.

    Positional arguments are matched to ``func``'s parameter names when ``func`` is
    given; nested dicts are redacted by key; URL passwords in strings are redacted.

    Returns:
        ``(args, kwargs, changed)``, where ``changed`` says whether anything was redacted.
    """
    args = tuple(args or ())
    kwargs = dict(kwargs or {})
    names = _parameter_names(func, len(args))
    new_args = tuple(
        REDACTED if name is not None and is_sensitive(name, words) else _redact_value(value, words)
        for name, value in zip(names, args, strict=True)
    )
    new_kwargs = {
        key: REDACTED if is_sensitive(key, words) else _redact_value(value, words)
        for key, value in kwargs.items()
    }
    return new_args, new_kwargs, (new_args != args or new_kwargs != kwargs)


def summarize_call(
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    *,
    words: Sequence[str] = DEFAULT_SENSITIVE_NAMES,
    func: Callable[..., Any] | None = None,
    max_chars: int = 500,
) -> str:
    """A redacted, size-capped one-line summary of a call's arguments.

    Example:
        >>> summarize_call((1,), {"password": "hunter2", "user": "ann"})
        "(1, password='***', user='ann')"
    """
    red_args, red_kwargs, _ = redact_call(args, kwargs, words=words, func=func)
    parts = [_repr.repr(a) for a in red_args]
    parts += [f"{k}={_repr.repr(v)}" for k, v in red_kwargs.items()]
    text = "(" + ", ".join(parts) + ")"
    if len(text) > max_chars:
        text = text[: max(0, max_chars - 15)] + f"... [{len(text)} chars]"
    return text

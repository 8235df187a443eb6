"""The one home of redaction: what is sensitive, and how it is hidden (pure, no I/O).

Everything celeryredis shows — log records, dead-letter entries and their views, CLI
text and JSON, reprs, exception messages, the ``argsrepr``/``kwargsrepr`` it sets at
publish, the effective configuration — goes through the functions here:

- :func:`redact_text` replaces the password of every URL in a text with ``***``
  (``redis://user:***@host``) and, given the values of sensitive arguments, every
  occurrence of those values.
- An argument (keyword, or positional bound to a parameter of the task's signature),
  a setting or a mapping key is sensitive when its name contains one of the
  sensitive words, case-insensitively: :data:`DEFAULT_SENSITIVE_NAMES`, plus the app
  setting ``celeryredis_sensitive_names`` and a task's ``sensitive_names``
  (:func:`sensitive_words` builds the list).
- :func:`redact_call` gives the redacted view of a call and the secret values it
  hid, which :func:`redact_text` then removes from exception texts and tracebacks.

Decisions are taken where the task's signature is known (in the worker, when a
dead-letter entry or a log record is written) and stored with what they redact, so a
process that never imported the task module shows the same ``***``.
"""

from __future__ import annotations

import functools
import inspect
import re
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DEFAULT_SENSITIVE_NAMES",
    "REDACTED",
    "RedactedCall",
    "call_secrets",
    "is_sensitive",
    "redact_call",
    "redact_setting",
    "redact_text",
    "redact_value",
    "sensitive_words",
    "summarize_call",
]

#: What a secret is replaced with wherever it would be shown.
REDACTED: Final = "***"

#: Words that make an argument, setting or key name sensitive (case-insensitive substrings).
DEFAULT_SENSITIVE_NAMES: Final = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "credential",
    "private_key",
)

#: Secret values shorter than this are not searched for in free text (a one-character
#: "secret" would blank out every occurrence of that character).
MIN_SECRET_CHARS: Final = 4

# user:password@ in a URL with a scheme ("redis://user:pw@h"; a password may start with "/").
_USERINFO_RE = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s;]*:)[^@\s;]*(?P<at>@)")
# Then what is left, parsable or not ("redis//:pw@h", "redis:/:pw@h", ":pw@h", a raw "@"
# in a password): from a colon not followed by "//" to the last "@" of the same token
# (never across white space, a quote or ";", the separator of sentinel URL lists), when
# it reads as a URL's user info (_mask_loose): a text such as "worker:celery@host" (a
# label and a Celery node name) stays shown, and so does a user name without a password
# ("redis://user@h").
# It starts with a literal, so it costs a fraction of the first.
_LOOSE_USERINFO_RE = re.compile(r""":(?!//)[^\s'";]*@""")
_TOKEN_STOPS: Final = frozenset("'\";:")
_SCHEME_WORD_RE = re.compile(r"(?i)[a-z+]*(?:redis|sentinel|amqp|celery)[a-z+]*")

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlevel = 3


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace every URL password in ``text``, and every one of ``secrets``, with ``***``.

    Works on any string: log lines, exception messages, tracebacks, JSON, URLs that
    cannot be parsed, several URLs in one line.

    Args:
        text: Arbitrary text.
        secrets: Values to hide wherever they occur (those shorter than
            ``MIN_SECRET_CHARS`` (4) characters are ignored).

    Example:
        >>> redact_text("connecting to redis://app:s3cret@db:6379/0")
        'connecting to redis://app:***@db:6379/0'
        >>> redact_text("login failed for hunter22", secrets=["hunter22"])
        'login failed for ***'
    """
    if "@" in text:  # every URL password is followed by one (a per-record cost: skip the regex)
        text = _USERINFO_RE.sub(_mask_userinfo, text)
        if ":" in text:
            text = _LOOSE_USERINFO_RE.sub(_mask_loose, text)
    if secrets:
        found = {s for s in secrets if len(s) >= MIN_SECRET_CHARS}
        for secret in sorted(found, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
    return text


def _mask_userinfo(match: re.Match[str]) -> str:
    return f"{match.group('head')}{REDACTED}{match.group('at')}"


def _mask_loose(match: re.Match[str]) -> str:
    text, start = match.string, match.start()
    begin = start
    while begin and text[begin - 1] not in _TOKEN_STOPS and not text[begin - 1].isspace():
        begin -= 1
    pre, info = text[begin:start], match.group(0)[1:-1]
    url_like = (
        not pre  # ":pw@h"
        or "/" in pre  # "redis//:pw@h", what is left after "redis://user:"
        or "/" in info  # "redis:/:pw@h"
        or ":" in info  # "redis:user:pw@h"
        or _SCHEME_WORD_RE.fullmatch(pre) is not None  # "redis:pw@h"
    )
    return f":{REDACTED}@" if url_like else match.group(0)


def sensitive_words(
    conf: Mapping[str, Any] | None = None, extra: Iterable[str] = ()
) -> tuple[str, ...]:
    """The sensitive words in force: the defaults, the app's setting, then ``extra``.

    Args:
        conf: An app's configuration (its ``celeryredis_sensitive_names`` is added).
        extra: More words, e.g. a task's ``sensitive_names``.

    Example:
        >>> sensitive_words({"celeryredis_sensitive_names": ["iban"]}, ["pin"])[-2:]
        ('iban', 'pin')
    """
    configured = (conf.get("celeryredis_sensitive_names") if conf is not None else None) or ()
    return (*DEFAULT_SENSITIVE_NAMES, *configured, *extra)


def is_sensitive(name: str, words: Iterable[str] = DEFAULT_SENSITIVE_NAMES) -> bool:
    """True if ``name`` contains one of ``words`` (case-insensitive).

    Example:
        >>> is_sensitive("db_Password"), is_sensitive("user_id")
        (True, False)
    """
    if isinstance(words, tuple):  # the usual case: sensitive_words() gives a tuple
        try:
            return _is_sensitive_cached(name, words)
        except TypeError:  # an unhashable word: not cacheable
            pass
    lowered = name.lower()
    return any(word.lower() in lowered for word in words)


@functools.lru_cache(maxsize=4096)
def _is_sensitive_cached(name: str, words: tuple[str, ...]) -> bool:
    lowered = name.lower()
    return any(word.lower() in lowered for word in words)


#: Values that hold no secret of their own and have nothing to redact inside.
SCALAR_TYPES: Final = frozenset({int, float, bool, type(None)})


def same_kind(value: list[Any] | tuple[Any, ...], items: Iterable[Any]) -> Any:
    """``items`` as a sequence of ``value``'s type (a named tuple stays one).

    A list or tuple subclass whose constructor does not take one iterable becomes a
    plain list or tuple.
    """
    kind = type(value)
    if kind is list or kind is tuple:
        return kind(items)
    items = list(items)
    make = getattr(kind, "_make", None)  # collections.namedtuple and typing.NamedTuple
    try:
        return make(items) if callable(make) else kind(items)
    except TypeError:
        return tuple(items) if isinstance(value, tuple) else items


def redact_value(value: Any, words: Sequence[str] = DEFAULT_SENSITIVE_NAMES) -> Any:
    """A copy of ``value`` with sensitive mapping keys' values and URL passwords as ``***``.

    Mappings, lists and tuples are walked; strings are passed through :func:`redact_text`.
    """
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and is_sensitive(k, words) else redact_value(v, words)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return same_kind(value, (redact_value(v, words) for v in value))
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_setting(name: str, value: Any, words: Sequence[str] = DEFAULT_SENSITIVE_NAMES) -> Any:
    """The value of setting ``name`` as it may be shown.

    A string setting whose name (or ``name.key`` path inside a mapping) is sensitive is
    ``***``; URL passwords are redacted everywhere.

    Example:
        >>> redact_setting("broker_url", "redis://:pw@h:6379/0")
        'redis://:***@h:6379/0'
        >>> redact_setting("broker_transport_options", {"password": "pw", "db": 1})
        {'password': '***', 'db': 1}
    """
    if isinstance(value, str):
        return REDACTED if is_sensitive(name, words) else redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_setting(f"{name}.{k}", v, words) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return same_kind(value, (redact_setting(name, v, words) for v in value))
    return value


@functools.lru_cache(maxsize=4096)
def _positional_names(func: Callable[..., Any]) -> tuple[str, ...]:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return ()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in kinds)


def _secret_strings(value: Any) -> list[str]:
    """Every scalar inside a sensitive value, as text (to find it again in free text)."""
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _secret_strings(v)]
    if isinstance(value, list | tuple | set | frozenset):
        return [s for v in value for s in _secret_strings(v)]
    if isinstance(value, bytes):
        try:
            return [value.decode()]
        except UnicodeDecodeError:
            return []
    if value is None or isinstance(value, bool):
        return []
    return [str(value)]


def _nested_secrets(value: Any, words: Sequence[str]) -> list[str]:
    """Values under sensitive keys inside ``value`` (which itself is not sensitive)."""
    if isinstance(value, Mapping):
        found: list[str] = []
        for k, v in value.items():
            if isinstance(k, str) and is_sensitive(k, words):
                found += _secret_strings(v)
            else:
                found += _nested_secrets(v, words)
        return found
    if isinstance(value, list | tuple):
        return [s for v in value for s in _nested_secrets(v, words)]
    return []


@dataclass(frozen=True)
class RedactedCall:
    """The redacted view of a call, and the secret values it hides.

    Attributes:
        args: Positional arguments, sensitive ones as ``***``.
        kwargs: Keyword arguments, sensitive ones as ``***``.
        changed: Whether anything was redacted.
        secrets: The hidden values as text, to remove from exception texts with
            :func:`redact_text`. Never shown.
        positions: Indexes of the positional arguments that are sensitive.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    changed: bool
    secrets: tuple[str, ...] = field(repr=False, default=())
    positions: tuple[int, ...] = ()


def redact_call(
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    *,
    words: Sequence[str] = DEFAULT_SENSITIVE_NAMES,
    func: Callable[..., Any] | None = None,
    positions: Iterable[int] = (),
) -> RedactedCall:
    """The call with sensitive values replaced by ``***``.

    Positional arguments are matched to ``func``'s parameter names when ``func`` is
    given; ``positions`` marks more positional arguments as sensitive (a decision
    taken elsewhere, e.g. by the publisher); nested mapping keys are matched by name;
    URL passwords in strings are redacted.

    Example:
        >>> def connect(host, password): ...
        >>> call = redact_call(("db", "hunter22"), {}, func=connect)
        >>> call.args, call.secrets, call.positions
        (('db', '***'), ('hunter22',), (1,))
    """
    args = tuple(args or ())
    kwargs = dict(kwargs or {})
    named = _sensitive_positions(func, words)
    forced = set(positions)
    secrets: list[str] = []
    sensitive_at: list[int] = []
    new_args: list[Any] = []
    for index, value in enumerate(args):
        if index in named or index in forced:
            new_args.append(REDACTED)
            sensitive_at.append(index)
            secrets += _secret_strings(value)
        elif type(value) in SCALAR_TYPES:
            new_args.append(value)
        else:
            new_args.append(redact_value(value, words))
            secrets += _nested_secrets(value, words)
    new_kwargs: dict[str, Any] = {}
    for key, value in kwargs.items():
        if is_sensitive(key, words):
            new_kwargs[key] = REDACTED
            secrets += _secret_strings(value)
        elif type(value) in SCALAR_TYPES:
            new_kwargs[key] = value
        else:
            new_kwargs[key] = redact_value(value, words)
            secrets += _nested_secrets(value, words)
    red_args = tuple(new_args)
    return RedactedCall(
        red_args,
        new_kwargs,
        red_args != args or new_kwargs != kwargs,
        _distinct_secrets(secrets),
        tuple(sensitive_at),
    )


def call_secrets(
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    *,
    words: Sequence[str] = DEFAULT_SENSITIVE_NAMES,
    func: Callable[..., Any] | None = None,
) -> tuple[str, ...]:
    """``redact_call(args, kwargs, words=words, func=func).secrets``, without the view.

    For a log filter that needs only the values to hide: it builds no redacted copy of
    the arguments, and a call of numbers, booleans and ``None`` under names that are not
    sensitive costs a loop over them.

    Example:
        >>> def connect(host, password): ...
        >>> call_secrets(("db", "hunter22"), {"port": 1}, func=connect)
        ('hunter22',)
    """
    secrets: list[str] = []
    named = _sensitive_positions(func, words) if args else frozenset()
    for index, value in enumerate(args or ()):
        if index in named:
            secrets += _secret_strings(value)
        elif type(value) not in SCALAR_TYPES:
            secrets += _nested_secrets(value, words)
    for key, value in (kwargs or {}).items():
        if is_sensitive(key, words):
            secrets += _secret_strings(value)
        elif type(value) not in SCALAR_TYPES:
            secrets += _nested_secrets(value, words)
    return _distinct_secrets(secrets) if secrets else ()


def _sensitive_positions(func: Callable[..., Any] | None, words: Sequence[str]) -> frozenset[int]:
    """Indexes of ``func``'s positional parameters whose names are sensitive."""
    if func is None:
        return frozenset()
    try:
        return _sensitive_positions_cached(func, tuple(words))
    except TypeError:  # an unhashable callable: its parameters are not matched by name
        return frozenset()


@functools.lru_cache(maxsize=1024)
def _sensitive_positions_cached(func: Callable[..., Any], words: tuple[str, ...]) -> frozenset[int]:
    return frozenset(i for i, n in enumerate(_positional_names(func)) if is_sensitive(n, words))


def _distinct_secrets(secrets: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for s in secrets if s and s != REDACTED))


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
    return summarize_redacted(redact_call(args, kwargs, words=words, func=func), max_chars)


def summarize_redacted(call: RedactedCall, max_chars: int = 500) -> str:
    """:func:`summarize_call` of a call already redacted by :func:`redact_call`."""
    parts = [_repr.repr(a) for a in call.args]
    parts += [f"{k}={_repr.repr(v)}" for k, v in call.kwargs.items()]
    text = redact_text("(" + ", ".join(parts) + ")", call.secrets)
    if len(text) > max_chars:
        text = text[: max(0, max_chars - 15)] + f"... [{len(text)} chars]"
    return text

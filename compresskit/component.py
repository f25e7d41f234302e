"""What every pluggable component shares: a unique ``name`` and typed, validated options.

A component declares its options as a frozen dataclass in ``Options``; unknown keys and wrong types are
rejected with the dotted config path and a did-you-mean, before any work starts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from compresskit.errors import ConfigError, did_you_mean


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a component that takes none."""


class Component:
    """Base of decompositions, distillers, losses, tasks, trackers and commands.

    Subclasses set ``name`` (unique within their kind) and may set ``Options`` to a frozen dataclass.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Mapping[str, Any] | None = None, *, where: str = "") -> None:
        self.options = parse_options(self.Options, dict(options or {}), where or self.name)

    @classmethod
    def summary(cls) -> str:
        """First line of the description or the docstring."""
        text = cls.description or (cls.__doc__ or "")
        return text.strip().splitlines()[0] if text.strip() else ""


def parse_options(options_type: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate ``options_type`` from ``values``, reporting unknown keys and wrong types clearly.

    NaN and ±Inf are refused anywhere in an option (nested tables included): no setting means them,
    and a learning rate of ``inf`` would only show up as a NaN loss after the expensive part.
    """
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    for key in values:
        if key not in fields:
            raise ConfigError(
                f"{_join(where, key)}: unknown option.{did_you_mean(key, fields)} "
                f"Valid options: {', '.join(sorted(fields)) or 'none'}."
            )
    hints = _type_hints(options_type)
    checked = {key: _check_type(_join(where, key), value, hints[key]) for key, value in values.items()}
    try:
        return options_type(**checked)
    except OptionValueError as exc:
        raise ConfigError(f"{_join(where, exc.field)}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(_rooted(str(exc), where)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


class OptionValueError(ValueError):
    """Raised by an Options dataclass's ``__post_init__`` for one bad field; :func:`parse_options`
    reports it as ``<config path>.<field>: <message>``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def require_positive(options: Any, *names: str, zero_allowed: bool = False) -> None:
    """Raise :class:`OptionValueError` for the first of ``names`` that is set (not ``None``) and not
    ``> 0`` (``>= 0`` with ``zero_allowed``) — limits, repeats, lengths and sizes of a table."""
    for name in names:
        value = getattr(options, name)
        if value is None or (value > 0 or (zero_allowed and value == 0)):
            continue
        expected = "0 or more" if zero_allowed else "a positive number (> 0)"
        hint = " Leave it out to use the default." if value == 0 and not zero_allowed else ""
        raise OptionValueError(name, f"expected {expected}, found {value!r}.{hint}")


def _rooted(message: str, where: str) -> str:
    """Make a component's own ``"training.lr must ..."`` read ``"<where>.lr: must ..."``.

    Options classes that raise :class:`ConfigError` themselves name their fields relative to their own
    table; the config path of that table is only known here.
    """
    if not where or message.startswith((f"{where}.", f"{where}:")):
        return message
    last = where.rsplit(".", 1)[-1]
    for own in (f"{last}.", ""):
        head, _, rest = message.partition(" ")
        field = head.removeprefix(own) if own else head
        if (not own or head.startswith(own)) and field.isidentifier() and rest.startswith("must "):
            return f"{where}.{field}: {rest}"
    return f"{where}: {message}"


@functools.cache
def _type_hints(options_type: type) -> dict[str, Any]:
    """Resolved field types of an options class (cached: resolving them is slow, once per module built)."""
    return typing.get_type_hints(options_type)


def _check_type(path: str, value: Any, hint: Any) -> Any:
    """Return ``value`` (lists become tuples for tuple fields) or raise :class:`ConfigError`."""
    bad = _non_finite(value, path)
    if bad is not None:
        raise ConfigError(f"{bad[0]}: expected a finite number, found {bad[1]!r}.")
    if _matches(value, hint):
        return value
    if isinstance(value, list) and _matches(_deep_tuple(value), hint):
        return _deep_tuple(value)
    raise ConfigError(f"{path}: expected {_describe(hint)}, found {type(value).__name__} {value!r}.")


def _non_finite(value: Any, path: str) -> tuple[str, float] | None:
    """``(path, value)`` of the first NaN / ±Inf anywhere in ``value`` (nested tables and arrays)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    if isinstance(value, Mapping):
        items: Any = ((f"{path}.{k}", v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for inner_path, inner in items:
        found = _non_finite(inner, inner_path)
        if found is not None:
            return found
    return None


def _deep_tuple(value: Any) -> Any:
    return tuple(_deep_tuple(v) for v in value) if isinstance(value, list) else value


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        return _matches_tuple(value, args)
    if origin in (list, dict, Mapping):
        return isinstance(value, origin if origin is not Mapping else Mapping)
    if hint is type(None):
        return value is None
    return isinstance(value, hint) if isinstance(hint, type) else True


def _matches_tuple(value: Any, args: tuple[Any, ...]) -> bool:
    if not isinstance(value, tuple):
        return False
    if len(args) == 2 and args[1] is Ellipsis:
        return all(_matches(v, args[0]) for v in value)
    return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args, strict=True))


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "nothing (null)"
    return getattr(hint, "__name__", str(hint))

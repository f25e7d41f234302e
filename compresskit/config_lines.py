"""Where each key of a TOML config file is written: dotted config path → line number.

The standard library's :mod:`tomllib` (which reads our configs) keeps no positions, so an error about
``steps[1].options.stage2.training.learning_rate`` could not say *where* in the file that value is.
:func:`key_lines` scans the text once and records the line of every table header, every key, and every
key inside an inline table or array (``options = { b_shape = [5, 5] }`` gives
``steps[0].groups[0].options.b_shape``). :func:`locate` appends ``(file:line)`` — or ``(from --set
...)`` when an override wrote the value — to a message that names a config path.

It reads the subset of TOML that config files use (bare / quoted / dotted keys, ``[table]``,
``[[array.of.tables]]``, inline tables, arrays over several lines); anything it cannot follow is simply
not located (the message is kept as it is), never an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Top-level keys of a strategy; a config path in a message starts with one of them.
TOP_LEVEL = (
    "name",
    "description",
    "seed",
    "output_dir",
    "device",
    "model",
    "task",
    "finetune",
    "steps",
    "evaluation",
    "measure",
    "tracking",
)
_PATH_IN_MESSAGE = re.compile(
    r"(?<![\w.\[\]'\"/-])(?:" + "|".join(TOP_LEVEL) + r")(?:\.[A-Za-z_][\w-]*|\[\d+\])*"
)
_LEADING_PATH = re.compile(r"([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*|\[\d+\])*):\s")
_TOKEN = re.compile(r"\s*(\"(?:[^\"\\]|\\.)*\"|'[^']*'|[{}\[\],=.]|[^\s{}\[\],=.#\"']+)")


@dataclass(frozen=True)
class ConfigSource:
    """The file a strategy was read from and the ``--set`` overrides applied to it."""

    path: Path
    overrides: tuple[str, ...] = ()
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def read(cls, path: str | Path, overrides: Sequence[str] = ()) -> ConfigSource:
        """Scan ``path`` (unreadable → no line numbers, never an error)."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError:
            text = ""
        return cls(file, tuple(overrides), key_lines(text))


def format_key(path: Sequence[str | int]) -> str:
    """``["steps", 1, "options"]`` → ``"steps[1].options"``."""
    text = ""
    for token in path:
        text += f"[{token}]" if isinstance(token, int) else (f".{token}" if text else token)
    return text


def key_lines(text: str) -> dict[str, int]:
    """Dotted config path → 1-based line number of every table and key written in ``text``."""
    scanner = _Scanner()
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        start = number
        line = _strip_comment(lines[number])
        while _unbalanced(line) and number + 1 < len(lines):  # a value spanning several lines
            number += 1
            line += " " + _strip_comment(lines[number])
        scanner.line(line.strip(), start + 1)
        number += 1
    return scanner.found


class _Scanner:
    def __init__(self) -> None:
        self.found: dict[str, int] = {}
        self.table: list[str | int] = []
        self.arrays: dict[str, int] = {}  # path of an array of tables → its current length

    def line(self, line: str, number: int) -> None:
        if not line:
            return
        if line.startswith("[["):
            self._array_header(_split_key(line.strip("[] \t")), number)
        elif line.startswith("["):
            self.table = self._resolve(_split_key(line.strip("[] \t")))
            self._record(self.table, number)
        else:
            self._key_value(line, number)

    def _resolve(self, keys: list[str]) -> list[str | int]:
        """Header keys → a path, entering the last element of every array of tables on the way."""
        path: list[str | int] = []
        for key in keys:
            path.append(key)
            length = self.arrays.get(format_key(path))
            if length:
                path.append(length - 1)
        return path

    def _array_header(self, keys: list[str], number: int) -> None:
        parent = self._resolve(keys[:-1])
        array = [*parent, keys[-1]]
        length = self.arrays.get(format_key(array), 0)
        self.arrays[format_key(array)] = length + 1
        self.table = [*array, length]
        self._record(self.table, number)

    def _key_value(self, line: str, number: int) -> None:
        tokens = [t for t in _TOKEN.findall(line) if t]
        try:
            equals = tokens.index("=")
        except ValueError:
            return
        keys = [_unquote(t) for t in tokens[:equals] if t != "."]
        path = [*self.table, *keys]
        self._record(path, number)
        _Inline(tokens[equals + 1 :], self, number).value(path)

    def _record(self, path: Sequence[str | int], number: int) -> None:
        self.found.setdefault(format_key(path), number)


class _Inline:
    """Recursive descent over the tokens of one value (inline tables and arrays)."""

    def __init__(self, tokens: list[str], scanner: _Scanner, number: int) -> None:
        self.tokens, self.scanner, self.number, self.at = tokens, scanner, number, 0

    def _next(self) -> str:
        token = self.tokens[self.at] if self.at < len(self.tokens) else ""
        self.at += 1
        return token

    def value(self, path: list[str | int]) -> None:
        token = self._next()
        if token == "{":
            self._table(path)
        elif token == "[":
            self._array(path)

    def _table(self, path: list[str | int]) -> None:
        while self.at < len(self.tokens):
            keys: list[str] = []
            token = self._next()
            if token == "}":
                return
            while token not in ("=", "}", ""):
                if token not in (".", ","):
                    keys.append(_unquote(token))
                token = self._next()
            if token != "=":
                return
            self.scanner._record([*path, *keys], self.number)
            self.value([*path, *keys])

    def _array(self, path: list[str | int]) -> None:
        index = 0
        while self.at < len(self.tokens):
            token = self.tokens[self.at]
            if token == "]":
                self.at += 1
                return
            if token == ",":
                self.at += 1
                index += 1
                continue
            self.scanner._record([*path, index], self.number)
            self.value([*path, index])


def _split_key(text: str) -> list[str]:
    return [_unquote(t) for t in _TOKEN.findall(text) if t and t != "."]


def _unquote(token: str) -> str:
    return token[1:-1] if len(token) >= 2 and token[0] == token[-1] and token[0] in "\"'" else token


def _strip_comment(line: str) -> str:
    quote = ""
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[:index]
    return line


def _unbalanced(line: str) -> bool:
    depth = 0
    quote = ""
    for char in line:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
    return depth > 0 and not line.lstrip().startswith("[")


def config_path_in(message: str) -> str | None:
    """The config path a message names: the ``path:`` it starts with, else the first path under a
    top-level key of a strategy (``... (in steps[1].options.training.learning_rate)``)."""
    leading = _LEADING_PATH.match(message)
    if leading:
        return leading.group(1)
    for match in _PATH_IN_MESSAGE.finditer(message):
        found = match.group(0)
        if "." in found or "[" in found or message[match.end() : match.end() + 1] == ":":
            return found
    return None


def locate(message: str, source: ConfigSource | None) -> str:
    """``message`` with ``(file:line)`` of the config path it names, or the ``--set`` that wrote it.

    Unchanged when ``source`` is ``None``, the message names no config path, or already has a location.
    """
    if source is None or f"{source.path}:" in message or "(from --set" in message:
        return message
    dotted = config_path_in(message)
    if dotted is None:
        return message
    for text in source.overrides:
        written = text.partition("=")[0].strip()
        if _same_or_prefix(written, dotted):
            return f"{message} (from --set {text!r})"
    candidate = dotted
    while candidate:
        if candidate in source.lines:
            return f"{message} ({source.path}:{source.lines[candidate]})"
        candidate = _parent(candidate)
    return f"{message} (in {source.path})"


def _same_or_prefix(written: str, dotted: str) -> bool:
    return (
        dotted == written
        or dotted.startswith((f"{written}.", f"{written}["))
        or written.startswith((f"{dotted}.", f"{dotted}["))
    )


def _parent(dotted: str) -> str:
    cut = max(dotted.rfind("."), dotted.rfind("["))
    return dotted[:cut] if cut > 0 else ""

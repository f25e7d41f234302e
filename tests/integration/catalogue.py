"""The catalogue of bad inputs (``docs/errors.md``), checked entry by entry by the tests that produce it.

Each test that drives a bad input through the command line calls :func:`record` with the case id, a
one-line description, the command, the exit status and what the command printed on stderr. The
message is normalised (temporary folders → ``<tmp>``, the data folder → ``<data>``, process ids and
times → placeholders) and compared with the case's entry in ``docs/errors.md``: a message that changes
without the page changing fails the test. ``COMPRESSKIT_UPDATE_CATALOGUE=1`` rewrites the entries
instead (review the diff), so the page is generated from the tests and cannot drift from them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE = REPO_ROOT / "docs" / "errors.md"
UPDATE_ENV = "COMPRESSKIT_UPDATE_CATALOGUE"
HEADER_END = "<!-- cases: generated, one per test; do not edit below by hand -->"


@dataclass(frozen=True)
class Entry:
    case: str
    title: str
    command: str
    exit_code: int
    message: str

    def render(self) -> str:
        return (
            f"### {self.case}: {self.title}\n\n`{self.command}` → exit {self.exit_code}\n\n"
            f"```text\n{self.message}\n```\n"
        )


def normalise(text: str, *paths: tuple[Path | str, str]) -> str:
    """``text`` with machine-specific parts replaced by placeholders (longest paths first)."""
    for path, placeholder in sorted(paths, key=lambda item: -len(str(item[0]))):
        text = text.replace(str(path), placeholder)
    text = re.sub(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/[^/\s'\"]+", "<tmp>", text)
    text = re.sub(
        r"process \d+ \(user \S+ on host \S+, started [\d-]+ [\d:]+\)", "process <pid> (<who>)", text
    )
    text = re.sub(r"(UserWarning|PluginWarning): ", r"\1: ", text)
    lines = [line.rstrip() for line in text.splitlines() if not _noise(line)]
    return "\n".join(lines).strip()


def _noise(line: str) -> bool:
    """Lines third-party libraries print on stderr that say nothing about the input."""
    return bool(
        re.match(r"\s*(Loading weights|Writing model shards|\s*return Unpickler)", line)
        or re.match(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARNING) ", line)  # MLflow's logging
        or re.match(r"INFO {2}\[alembic", line)
        or "_weights_only_unpickler.py" in line
        or "it/s]" in line
    )


def read_page() -> dict[str, str]:
    """Case id → its rendered block, from ``docs/errors.md``."""
    if not PAGE.is_file():
        return {}
    body = PAGE.read_text(encoding="utf-8").partition(HEADER_END)[2]
    blocks = {}
    for chunk in re.split(r"(?m)^(?=### )", body):
        match = re.match(r"### ([\w-]+):", chunk)
        if match:
            blocks[match.group(1)] = chunk.strip() + "\n"
    return blocks


def record(entry: Entry) -> None:
    """Check ``entry`` against the page (or write it there with ``COMPRESSKIT_UPDATE_CATALOGUE=1``)."""
    rendered = entry.render()
    if os.environ.get(UPDATE_ENV):
        _write_block(entry.case, rendered)
        return
    found = read_page().get(entry.case)
    assert found is not None, f"docs/errors.md has no entry {entry.case!r}; rerun with {UPDATE_ENV}=1"
    assert found == rendered, (
        f"docs/errors.md entry {entry.case!r} is out of date (rerun with {UPDATE_ENV}=1 and review):\n"
        f"--- page\n{found}\n--- now\n{rendered}"
    )


def _write_block(case: str, rendered: str) -> None:
    text = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else HEADER_END + "\n"
    head = text.partition(HEADER_END)[0]
    blocks = read_page()
    blocks[case] = rendered
    ordered = [blocks[key] for key in CASES if key in blocks]
    PAGE.write_text(head + HEADER_END + "\n\n" + "\n".join(ordered), encoding="utf-8")


#: Every case the page lists, in page order (a test checks the page has exactly these).
CASES = (
    "no-steps",
    "empty-losses",
    "zero-limit",
    "zero-repeats",
    "negative-train-limit",
    "zero-max-length",
    "infinite-learning-rate",
    "seed-out-of-range",
    "unknown-key",
    "unknown-option",
    "step-replaces-nothing",
    "step-grows-model",
    "head-copy-into-decomposed-module",
    "unknown-loss",
    "unknown-tracker-option",
    "set-without-value",
    "label-outside-label-set",
    "missing-data-file",
    "teacher-missing",
    "teacher-truncated-weights",
    "teacher-non-finite-weights",
    "compress-non-finite-weights",
    "compressed-folder-truncated",
    "teacher-remote-code",
    "teacher-pickle-refused",
    "run-folder-in-use",
    "blocked-component",
    "disable-plugins-typo",
    "plugin-exits-on-import",
    "non-finite-loss",
    "disk-full",
    "sigterm",
)

"""Reading and validating GLUE TSV files (the ``download_glue_data.py`` layout) and the Hub dataset.

Files are read with ``csv.QUOTE_NONE`` (a default CSV reader merges rows of QNLI dev that begin with a
bare ``"``) and ``utf-8-sig`` (MRPC starts with a byte-order mark); CoLA has no header. Every row is
checked: its number of tab-separated fields must match the header, and its label must be in the label
set (a number for STS-B), otherwise a :class:`~compresskit.DataError` names the file and line.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from compresskit import DataError

from .specs import GlueSpec

logger = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"


def read_tsv(path: Path, spec: GlueSpec, *, skip_malformed: bool = False) -> dict[str, list[Any]]:
    """Columns (Hub names, ``label``, ``idx``) of the GLUE file ``path`` of task ``spec``."""
    if not path.is_file():
        raise DataError(
            f"GLUE {spec.name}: missing file {path}. Expected the GLUE distribution layout "
            f"<data_dir>/{spec.folder}/{path.name} (as written by download_glue_data.py); set the "
            "task option data_dir, or source='hub' with a network."
        )
    columns: dict[str, list[Any]] = {name: [] for name in (*spec.text_columns, "label", "idx")}
    skipped = 0
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header, positions = _header(reader, path, spec)
        for row in reader:
            if not row:
                continue
            where = f"{path}:{reader.line_num}"
            try:
                example = _parse_row(row, header, positions, spec, where)
            except DataError:
                if not skip_malformed:
                    raise
                skipped += 1
                continue
            for name, value in zip(columns, (*example, len(columns["idx"])), strict=True):
                columns[name].append(value)
    if skipped:
        logger.warning("GLUE %s: skipped %d malformed row(s) of %s", spec.name, skipped, path)
    if not columns["idx"]:
        raise DataError(f"GLUE {spec.name}: {path} holds no examples.")
    return columns


def _header(reader: Any, path: Path, spec: GlueSpec) -> tuple[list[str], list[int]]:
    header: list[str] = list(spec.columns) if spec.columns is not None else next(reader, [])
    wanted = (*spec.file_columns, spec.label_column)
    missing = [name for name in wanted if name not in header]
    if missing:
        raise DataError(
            f"{path}:1: GLUE {spec.name} header lacks column(s) {missing}; found {header}. "
            f"Expected a GLUE {spec.folder} file with columns {list(wanted)}."
        )
    return header, [header.index(name) for name in wanted]


def _parse_row(
    row: list[str], header: list[str], positions: list[int], spec: GlueSpec, where: str
) -> tuple[Any, ...]:
    if len(row) != len(header):
        raise DataError(
            f"{where}: malformed row: expected {len(header)} tab-separated fields "
            f"({', '.join(header)}), found {len(row)}. Check the file is the GLUE distribution "
            "(tabs, no quoting) or pass skip_malformed=true."
        )
    values = [row[i] for i in positions]
    return (*values[:-1], parse_label(values[-1], spec, where))


def parse_label(raw: str, spec: GlueSpec, where: str) -> int | float:
    """Class id of ``raw`` (or the float score for STS-B); DataError when outside the label set."""
    text = raw.strip()
    if spec.label_names is None:
        try:
            return float(text)
        except ValueError:
            raise DataError(f"{where}: GLUE {spec.name} score {raw!r} is not a number.") from None
    if text not in spec.label_names:
        raise DataError(
            f"{where}: GLUE {spec.name} label {raw!r} is outside the label set {list(spec.label_names)}."
        )
    return spec.label_names.index(text)


def load_hub(spec: GlueSpec, split: str, cache_dir: str | None = None) -> Any:
    """The Hub's ``nyu-mll/glue`` split; DataError when the Hub cannot be reached (offline)."""
    import datasets

    try:
        return datasets.load_dataset(
            HUB_DATASET, spec.hub_config or spec.name, split=spec.hub_splits[split], cache_dir=cache_dir
        )
    except Exception as exc:
        raise DataError(
            f"GLUE {spec.name}: could not load {HUB_DATASET} ({spec.hub_config or spec.name}, "
            f"{spec.hub_splits[split]}) from the Hugging Face Hub: {type(exc).__name__}: {exc}. "
            "Without a network use source='local' with the GLUE files in data_dir."
        ) from exc

"""Classification tasks: the GLUE tasks shipped inside the project, a user's own file, or a hub dataset.

A :class:`TaskData` holds train and dev examples as ``(text_a, text_b or None, label index)`` and the
label names. Built-in tasks are read from ``data/files`` (copied from GLUE; see PROVENANCE there), never
from outside the project.
"""
from __future__ import annotations

import csv
import functools
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

FILES = Path(__file__).parent / "files"
BUILTIN_TASKS = ("sst2", "qnli", "qqp", "mnli")
# label orders follow GLUE's (index = position)
_BUILTIN_LABELS = {
    "sst2": ["0", "1"],
    "qnli": ["entailment", "not_entailment"],
    "qqp": ["0", "1"],
    "mnli": ["entailment", "neutral", "contradiction"],
}

Example = tuple[str, "str | None", int]


@dataclass
class TaskData:
    name: str
    train: list[Example]
    dev: list[Example]
    label_names: list[str]
    scoring: str | None = None  # None: classification; "letter" / "number": a generative task (prompt, answer, label)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def chance_accuracy(self) -> float:
        """The accuracy of guessing uniformly: 1 / labels (choices for MMLU and prompted tasks); 0 where the answer
        is free text (GSM-8K's number, an instruction's response). A target at or below it measures nothing."""
        return 0.0 if self.scoring in ("number", "exact") else 1.0 / self.num_labels

    @property
    def pair(self) -> bool:
        return any(ex[1] is not None for ex in self.train[:50])


class DataError(ValueError):
    """Bad data input; the message names the field and what is allowed."""


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def _read_rows(path: Path, setting: str = "data_file") -> list[dict]:
    """Rows of a CSV/TSV (header line required), JSON (list of objects, or id -> object) or JSONL file;
    errors name ``setting``, the setting that gave the path."""
    if not path.exists():
        raise DataError(f"{setting} {str(path)!r} does not exist")
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1].lstrip(".").lower() if suffixes else ""
    if kind not in ("csv", "tsv", "jsonl", "json"):
        raise DataError(f"{setting} {str(path)!r}: extension must be one of .csv, .tsv, .json, .jsonl (optionally .gz)")
    try:
        with _open_text(path) as fh:
            if kind in ("csv", "tsv"):
                tsv = kind == "tsv"
                rows = list(csv.DictReader(fh, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL))
            elif kind == "jsonl":
                rows = [json.loads(line) for line in fh if line.strip()]
            else:
                data = json.load(fh)
                rows = list(data.values()) if isinstance(data, dict) else list(data) if isinstance(data, list) else [data]
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error, OSError, EOFError) as err:
        reason = "it is not UTF-8 text" if isinstance(err, UnicodeDecodeError) else str(err).splitlines()[0][:120]
        raise DataError(f"{setting} {str(path)!r} cannot be read as {kind.upper()}: {reason}") from None
    if any(not isinstance(r, dict) for r in rows):
        raise DataError(f"{setting} {str(path)!r}: every row must be an object of column -> value")
    if not rows:
        raise DataError(f"{setting} {str(path)!r} is empty")
    return rows


def _to_examples(rows: list[dict], path: str, text_columns: Sequence[str], label_column: str) -> list[tuple[str, str | None, str]]:
    if not 1 <= len(text_columns) <= 2:
        raise DataError(f"text_columns must name one or two columns, got {list(text_columns)}")
    present = set(rows[0])
    for col in [*text_columns, label_column]:
        if col not in present:
            raise DataError(f"column {col!r} (from text_columns/label_column) is missing in {path}; "
                            f"columns present: {sorted(present)}")
    out = []
    for row in rows:
        a = str(row[text_columns[0]] or "").strip()
        b = str(row[text_columns[1]] or "").strip() if len(text_columns) == 2 else None
        label = row[label_column]
        if label is None or str(label).strip() == "":
            continue
        out.append((a, b, canonical_label(label)))
    if not out:
        raise DataError(f"{path} has no labelled rows")
    return out


def canonical_label(label: object) -> str:
    """A label as one string per class: an integral number is written as an integer (``1``, ``1.0`` and ``1`` from
    JSON or a spreadsheet's ``1.0`` are one class, ``1``); anything else is its stripped text."""
    text = str(label).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _label_names(train: list, given: list[str] | None) -> list[str]:
    """The labels of the training examples (a dev label outside them is refused by ``_index``)."""
    if given:
        return list(given)
    names = sorted({ex[2] for ex in train})
    if all(n.lstrip("-").isdigit() for n in names):  # integer labels: numeric order
        names = sorted(names, key=int)
    return names


def _index(examples: list, names: list[str], path: str) -> list[Example]:
    lookup = {n: i for i, n in enumerate(names)}
    out = []
    for a, b, label in examples:
        if label not in lookup:
            raise DataError(f"label {label!r} in {path} is not one of the labels {names}")
        out.append((a, b, lookup[label]))
    return out


def load_file_task(train_path: str, dev_path: str | None, text_columns: Sequence[str], label_column: str,
                   dev_fraction: float = 0.1, seed: int = 0, name: str | None = None) -> TaskData:
    """A user's own CSV/TSV/JSON/JSONL: one or two text columns and a label column (strings or integers).

    Without ``dev_path`` a ``dev_fraction`` of the training file is held out (deterministic by seed).
    """
    train = _to_examples(_read_rows(Path(train_path)), train_path, text_columns, label_column)
    if dev_path:
        dev = _to_examples(_read_rows(Path(dev_path), "dev_file"), dev_path, text_columns, label_column)
    else:
        import numpy as np

        if not 0 < dev_fraction < 1:
            raise DataError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
        order = np.random.default_rng(seed).permutation(len(train))
        cut = max(1, int(round(len(train) * dev_fraction)))
        if cut >= len(train):
            raise DataError(f"{train_path} has too few rows ({len(train)}) to hold out a dev split")
        dev = [train[i] for i in order[:cut]]
        train = [train[i] for i in order[cut:]]
    names = _label_names(train, None)
    if len(names) < 2:
        held = "" if dev_path else f" after holding out {len(dev)} of its rows as the dev split (give dev_file to keep them)"
        raise DataError(f"label_column {label_column!r} must have at least 2 distinct values in the training rows of "
                        f"{train_path}{held}, got {names}")
    return TaskData(name or Path(train_path).stem, _index(train, names, train_path), _index(dev, names, dev_path or train_path), names)


def _builtin_files(name: str) -> tuple[Path, Path, list[str]]:
    """A built-in task's train and dev files and its text columns."""
    folder = FILES / name
    if name == "sst2":
        return folder / "train.tsv.gz", folder / "dev.tsv.gz", ["sentence"]
    return folder / "train.json.gz", folder / "dev.json.gz", ["text_a", "text_b"]


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None  # _read_rows names the missing file
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=len(BUILTIN_TASKS))
def _read_builtin_task(name: str, stamps: tuple) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """The parsed files, once per process (SST-2's 67k rows take 0.4 s; a run, a Flower node and every test
    read them again); ``stamps`` (size, mtime of both files) makes a changed file read again."""
    train_p, dev_p, cols = _builtin_files(name)
    names = _BUILTIN_LABELS[name]
    train = _index(_to_examples(_read_rows(train_p), str(train_p), cols, "label"), names, str(train_p))
    dev = _index(_to_examples(_read_rows(dev_p), str(dev_p), cols, "label"), names, str(dev_p))
    return tuple(train), tuple(dev)


def builtin_chance_accuracy(name: str) -> float | None:
    """A shipped task's chance accuracy by :attr:`TaskData.chance_accuracy`'s rule, without reading its files;
    None for other tasks."""
    labels = _BUILTIN_LABELS.get(name)
    return TaskData(name, [], [], list(labels)).chance_accuracy if labels else None


def load_builtin_task(name: str) -> TaskData:
    if name not in BUILTIN_TASKS:
        raise DataError(f"task must be one of {list(BUILTIN_TASKS)} (or a data file / hub name), got {name!r}")
    train_p, dev_p, _ = _builtin_files(name)
    stamps = (_stamp(train_p), _stamp(dev_p))
    train, dev = _read_builtin_task(name, stamps)
    return TaskData(name, list(train), list(dev), list(_BUILTIN_LABELS[name]))  # the caller's own lists


def load_hub_task(name: str) -> TaskData:  # pragma: no cover - needs a reachable hub
    """``glue/sst2``-style names through Hugging Face ``datasets`` (where a hub is reachable)."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"task {name!r} looks like a hub dataset; install 'datasets' to use it") from exc
    path, _, config = name.partition("/")
    ds = datasets.load_dataset(path, config or None)
    split_dev = "validation" if "validation" in ds else ("validation_matched" if "validation_matched" in ds else "test")
    cols = [c for c in ds["train"].column_names if c not in ("label", "idx")]
    names = ds["train"].features["label"].names

    def conv(split):
        return [(row[cols[0]], row[cols[1]] if len(cols) > 1 else None, int(row["label"])) for row in ds[split]]

    return TaskData(name, conv("train"), conv(split_dev), list(names))


def load_task(task: str, *, data_file: str | None = None, dev_file: str | None = None,
              text_columns: Sequence[str] = ("text",), label_column: str = "label", seed: int = 0) -> TaskData:
    """Dispatch: a built-in name, ``task="file"`` with ``data_file``, or a hub name containing ``/``."""
    if data_file:
        return load_file_task(data_file, dev_file, text_columns, label_column, seed=seed)
    if task in BUILTIN_TASKS:
        return load_builtin_task(task)
    if "/" in task:
        return load_hub_task(task)
    raise DataError(f"task must be one of {list(BUILTIN_TASKS)}, a hub name like 'glue/sst2', or set data_file; got {task!r}")

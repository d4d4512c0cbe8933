"""A Hugging Face ``datasets`` dataset as a text source (``datasets`` is imported only when one is used).

The dataset must be map-style (random access): a ``datasets.Dataset``, a split of a ``DatasetDict``, a
folder written by ``save_to_disk``, or a name for ``datasets.load_dataset`` (which may download; that is
the caller's choice). Rows are read in blocks; one block is kept.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ._errors import DataError
from ._source import Record, TextSource, digest

_BLOCK = 1024


def import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError(
            "reading a Hugging Face dataset needs the `datasets` package: "
            "`pip install 'jsae[data]'` (or `pip install datasets`)"
        ) from None
    return datasets


def load(dataset, *, split: str = "train", path: Path | None = None):
    """A map-style ``datasets.Dataset`` from a name, a ``save_to_disk`` folder, a Dataset or a DatasetDict."""
    datasets = import_datasets()
    if path is not None:
        try:
            dataset = datasets.load_from_disk(str(path))
        except Exception as e:
            raise DataError(f"{path} looks like a saved Hugging Face dataset but cannot be loaded ({e})") from None
    elif isinstance(dataset, str):
        dataset = datasets.load_dataset(dataset, split=split)
    if isinstance(dataset, (datasets.DatasetDict, dict)):
        if split not in dataset:
            raise DataError(f"the dataset has no split {split!r} (splits: {', '.join(dataset)}); pass split=NAME")
        dataset = dataset[split]
    if isinstance(dataset, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise DataError(
            "streaming (iterable) datasets have no fixed order to resume from; load it with "
            "streaming=False, or save it with `save_to_disk` and pass that folder"
        )
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(
            f"dataset= must be a datasets.Dataset, a DatasetDict, a name or a folder, not {type(dataset).__name__}"
        )
    return dataset


class HFDataset(TextSource):
    """One document per row; the text in column ``field``; null text is skipped."""

    def __init__(self, dataset, *, field: str = "text", name: str = ""):
        columns = list(dataset.column_names)
        if field not in columns:
            raise DataError(
                f"the dataset has no column {field!r} (columns: {', '.join(columns)}); "
                "pass field=NAME (CLI --text-field) to read another column"
            )
        if len(dataset) == 0:
            raise DataError("the dataset has no rows; give a dataset with text rows")
        self.field, self.name = field, name or str(getattr(dataset, "info", None) and dataset.info.dataset_name or "")
        n = len(dataset)  # a content sample: stable across copies and sessions (datasets' own fingerprint is not)
        self._fp = digest("hf", field, n, [str(dataset[int(i)][field])[:4096] for i in sorted({0, n // 2, n - 1})])
        self._ds = dataset.select_columns([field])
        self._lock, self._block, self._rows = threading.Lock(), -1, []

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> Record:
        b = i // _BLOCK
        with self._lock:
            if b != self._block:
                self._rows = self._ds[b * _BLOCK : (b + 1) * _BLOCK][self.field]
                self._block = b
            text = self._rows[i - b * _BLOCK]
        if text is not None and not isinstance(text, str):
            raise DataError(
                f"dataset row {i}: column {self.field!r} holds {type(text).__name__}, not a string; "
                "choose a text column"
            )
        return Record(text or "", True)

    def describe(self) -> dict:
        return {
            "kind": "hf",
            "name": self.name,
            "field": self.field,
            "records": len(self),
            "documents": len(self),
            "fingerprint": self._fp,
        }

"""What every text source is: random access to a corpus's records in one fixed order.

A *record* is a piece of one document's text. Most sources give one record per document (a JSONL line,
a Parquet row, a dataset row); a ``.txt`` file is one document cut into pieces of bounded size so that
a large file is never held in memory whole. ``ends_document`` marks a document's last record: that is
where the token stream gets its EOS. Records are what :class:`jsae.data.ContextStream` shards, repeats
and tokenizes, so every source is a plain ``Sequence`` that ``grain.MapDataset.source`` accepts.
"""

from __future__ import annotations

import abc
import bisect
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple


class Record(NamedTuple):
    text: str
    ends_document: bool


class TextSource(abc.ABC):
    """``len(source)`` records, ``source[i] -> Record``; reading is thread-safe and deterministic."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, i: int) -> Record: ...

    @abc.abstractmethod
    def describe(self) -> dict:
        """JSON-able: ``kind``, where it reads from, ``records``, ``documents`` and a content ``fingerprint``."""

    @property
    def fingerprint(self) -> str:
        return self.describe()["fingerprint"]


def digest(*parts) -> str:
    """A short hex sha256 of JSON-able parts (fingerprints of sources, tokenizers, configs)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def sampled_file_digest(path: Path, sample: int = 1 << 20) -> str:
    """sha256 of a file's size and its first and last ``sample`` bytes: cheap, and stable across copies."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(sample))
        if size > sample:
            f.seek(max(sample, size - sample))
            h.update(f.read(sample))
    return h.hexdigest()[:32]


class ConcatSource(TextSource):
    """Several sources one after another (a folder's files, in sorted order)."""

    def __init__(
        self,
        sources: Sequence[TextSource],
        *,
        names: Sequence[str] | None = None,
        kind: str = "folder",
        path: str = "",
        extra: dict | None = None,
    ):
        self.sources = list(sources)
        self.names = list(names) if names is not None else [str(i) for i in range(len(self.sources))]
        self._ends = []
        total = 0
        for s in self.sources:
            total += len(s)
            self._ends.append(total)
        self._kind, self._path, self._extra = kind, path, dict(extra or {})

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, i: int) -> Record:
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range for a source of {len(self)} records")
        k = bisect.bisect_right(self._ends, i)
        return self.sources[k][i - (self._ends[k - 1] if k else 0)]

    def describe(self) -> dict:
        parts = [s.describe() for s in self.sources]
        return {
            "kind": self._kind,
            "path": self._path,
            "files": len(parts),
            **self._extra,
            "records": len(self),
            "documents": sum(p["documents"] for p in parts),
            "fingerprint": digest(list(zip(self.names, (p["fingerprint"] for p in parts)))),
        }

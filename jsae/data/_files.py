"""Local text files: ``.txt`` (one document per file), ``.jsonl`` (one document per line, a named text
field) and ``.parquet`` (one document per row, a named string column; needs ``pyarrow``).

Each file is checked when it is opened (UTF-8, JSON, the field), so a bad file fails before a run
starts, not hours into it; what stays in memory is a few integers per record (offsets), never the text.
"""

from __future__ import annotations

import hashlib
import json
import threading
from array import array
from pathlib import Path

import numpy as np

from ._errors import DataError
from ._source import Record, TextSource, sampled_file_digest

PIECE_BYTES = 1 << 16  # a .txt file is read and tokenized in pieces of at most this many bytes
_BOM = "\ufeff"


def _printable(b: int) -> bool:  # ASCII, not whitespace
    return 0x21 <= b <= 0x7E


def _alpha(b: int) -> bool:
    return 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A


def cut_point(buf: bytes, start: int, limit: int) -> int:
    """End of the piece of ``buf`` that starts at ``start``: at most ``limit`` bytes, ``buf`` longer than that.

    Cuts where byte-level BPE pre-tokenizers (GPT-2, Llama 3, SmolLM2) split anyway, so the pieces
    tokenize exactly as the whole text would: after a newline between two printable ASCII characters,
    else before a space between a printable character and a letter. Text with neither (no newline or
    space in ``limit`` bytes) is cut at a UTF-8 character boundary: still lossless, though the tokens at
    that one cut may differ from the whole text's.
    """
    end = start + limit
    j = buf.rfind(b"\n", start + 1, end)
    while j > start:
        if _printable(buf[j - 1]) and _printable(buf[j + 1]):
            return j + 1
        j = buf.rfind(b"\n", start + 1, j)
    j = buf.rfind(b" ", start + 1, end)
    while j > start:
        if _printable(buf[j - 1]) and _alpha(buf[j + 1]):
            return j
        j = buf.rfind(b" ", start + 1, j)
    j = end
    while j > start + 1 and (buf[j] & 0xC0) == 0x80:  # not inside a multi-byte character
        j -= 1
    return j


def _utf8_error(path: Path, offset: int, e: UnicodeDecodeError, where: str = "") -> DataError:
    bad = e.object[e.start]
    return DataError(
        f"{path}{where} is not UTF-8 text: byte 0x{bad:02x} at byte offset {offset + e.start} ({e.reason}); "
        "convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`) or leave it out"
    )


def _check_nonempty(path: Path, size: int) -> None:
    if size == 0:
        raise DataError(f"{path} is empty (0 bytes); give a file with text in it, or remove it from the folder")


class TxtFile(TextSource):
    """A ``.txt`` file is one document, read in pieces of at most ``piece_bytes`` (cut by :func:`cut_point`).

    Blank lines do not split it: for many documents use a folder of ``.txt`` files or a ``.jsonl`` file.
    A UTF-8 byte-order mark at the start is dropped.
    """

    def __init__(self, path: str | Path, *, piece_bytes: int = PIECE_BYTES):
        self.path = Path(path)
        if piece_bytes < 8:
            raise DataError(f"piece_bytes={piece_bytes} is too small; use at least 8 (default {PIECE_BYTES})")
        size = self.path.stat().st_size
        _check_nonempty(self.path, size)
        starts, sha = array("q"), hashlib.sha256()
        with open(self.path, "rb") as f:
            buf, base, start = b"", 0, 0  # buf holds file bytes [base, base + len(buf)); start: next piece
            while True:
                block = f.read(max(4 * piece_bytes, 1 << 20))
                sha.update(block)
                buf = buf[start:] + block
                base, start = base + start, 0
                while (rest := len(buf) - start) > (piece_bytes if block else 0):  # at EOF: all that is left
                    end = cut_point(buf, start, piece_bytes) if rest > piece_bytes else len(buf)
                    try:
                        buf[start:end].decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise _utf8_error(self.path, base + start, e) from None
                    starts.append(base + start)
                    start = end
                if not block:
                    break
        self._bounds = np.append(np.frombuffer(starts, np.int64), size)
        self._sha = sha.hexdigest()[:32]

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def __getitem__(self, i: int) -> Record:
        lo, hi = int(self._bounds[i]), int(self._bounds[i + 1])
        with open(self.path, "rb") as f:
            f.seek(lo)
            text = f.read(hi - lo).decode("utf-8")
        if lo == 0 and text.startswith(_BOM):
            text = text[1:]
        return Record(text, i == len(self) - 1)

    def describe(self) -> dict:
        return {
            "kind": "txt",
            "name": self.path.name,
            "path": str(self.path),
            "records": len(self),
            "documents": 1,
            "fingerprint": self._sha,
        }


def _jsonl_text(path: Path, line: bytes, lineno: int, offset: int, field: str) -> str:
    where = f":{lineno}"
    try:
        s = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, offset, e, where) from None
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}{where}: not valid JSON ({e.msg} at column {e.colno}); "
            'each line of a .jsonl file must be one JSON object such as {"text": "..."}'
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}{where}: the line is a JSON {type(obj).__name__}, not an object with a {field!r} field")
    if field not in obj:
        keys = ", ".join(map(repr, list(obj)[:10])) or "none"
        raise DataError(
            f"{path}{where}: no field {field!r} (fields: {keys}); pass field=NAME (CLI --text-field) "
            "to read another field"
        )
    text = obj[field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise DataError(f"{path}{where}: field {field!r} holds a JSON {type(text).__name__}, not a string")
    return text


class JsonlFile(TextSource):
    """A ``.jsonl`` file: one document per non-blank line, the text in ``field``; null text is skipped."""

    def __init__(self, path: str | Path, *, field: str = "text"):
        self.path, self.field = Path(path), field
        _check_nonempty(self.path, self.path.stat().st_size)
        starts, ends, sha = array("q"), array("q"), hashlib.sha256()
        offset = 0
        with open(self.path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                sha.update(line)
                if line.strip():
                    _jsonl_text(self.path, line, lineno, offset, field)
                    starts.append(offset)
                    ends.append(offset + len(line))
                offset += len(line)
        if not starts:
            raise DataError(f"{self.path} has no JSON lines (only blank ones); give one JSON object per line")
        self._starts, self._ends = np.frombuffer(starts, np.int64), np.frombuffer(ends, np.int64)
        self._sha = hashlib.sha256(f"{field}\0{sha.hexdigest()}".encode()).hexdigest()[:32]

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i: int) -> Record:
        lo, hi = int(self._starts[i]), int(self._ends[i])
        with open(self.path, "rb") as f:
            f.seek(lo)
            line = f.read(hi - lo)
        try:
            return Record(_jsonl_text(self.path, line, 0, lo, self.field), True)
        except DataError:  # the file changed since it was opened and checked: say where, by line number
            with open(self.path, "rb") as f:
                lineno = f.read(lo).count(b"\n") + 1
            _jsonl_text(self.path, line, lineno, lo, self.field)
            raise

    def describe(self) -> dict:
        return _one_document_per_record(self, "jsonl")


def _one_document_per_record(src: JsonlFile | ParquetFile, kind: str) -> dict:
    """``describe()`` of a file whose every record is one document (JSON lines, Parquet rows)."""
    n = len(src)
    return {
        "kind": kind,
        "name": src.path.name,
        "path": str(src.path),
        "field": src.field,
        "records": n,
        "documents": n,
        "fingerprint": src._sha,
    }


def import_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            "reading .parquet files needs pyarrow: `pip install 'jsae[data]'` (or `pip install pyarrow`)"
        ) from None
    return pyarrow, pq


class _RowGroupCache:
    """One decoded row group for the whole process: reading a folder of Parquet files holds one at a time."""

    lock = threading.Lock()
    key: tuple | None = None
    rows: list = []


class ParquetFile(TextSource):
    """A ``.parquet`` file: one document per row, the text in string column ``field``; nulls are skipped.

    Rows are read one row group at a time (the file's writer chose its size), and only one is kept.
    """

    def __init__(self, path: str | Path, *, field: str = "text"):
        self.path, self.field = Path(path), field
        _check_nonempty(self.path, self.path.stat().st_size)
        pa, pq = import_pyarrow()
        try:
            with pq.ParquetFile(self.path) as pf:
                schema, meta = pf.schema_arrow, pf.metadata
                groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError with its own text
            raise DataError(f"{self.path} cannot be read as Parquet ({e}); check that the file is complete") from None
        if field not in schema.names:
            raise DataError(
                f"{self.path} has no column {field!r} (columns: {', '.join(schema.names)}); "
                "pass field=NAME (CLI --text-field) to read another column"
            )
        kind = schema.field(field).type
        if not (
            pa.types.is_string(kind)
            or pa.types.is_large_string(kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(kind)
        ):
            raise DataError(f"{self.path}: column {field!r} has type {kind}, not string; choose a text column")
        self._group_ends = np.cumsum(np.asarray(groups, np.int64))
        if not len(self._group_ends) or self._group_ends[-1] == 0:
            raise DataError(f"{self.path} has no rows; give a Parquet file with text rows")
        self._sha = hashlib.sha256(f"{field}\0{sampled_file_digest(self.path)}".encode()).hexdigest()[:32]

    def __len__(self) -> int:
        return int(self._group_ends[-1])

    def __getitem__(self, i: int) -> Record:
        g = int(np.searchsorted(self._group_ends, i, side="right"))
        first = int(self._group_ends[g - 1]) if g else 0
        key = (str(self.path), self.field, g)
        with _RowGroupCache.lock:
            if _RowGroupCache.key != key:
                _, pq = import_pyarrow()
                with pq.ParquetFile(self.path) as pf:
                    _RowGroupCache.rows = pf.read_row_group(g, columns=[self.field]).column(0).to_pylist()
                _RowGroupCache.key = key
            text = _RowGroupCache.rows[i - first]
        return Record(text or "", True)

    def describe(self) -> dict:
        return _one_document_per_record(self, "parquet")

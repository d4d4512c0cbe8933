"""How a path (or nothing, or a dataset) becomes a :class:`~jsae.data.TextSource`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from . import _hf as hf
from ._errors import DataError
from ._files import PIECE_BYTES, JsonlFile, ParquetFile, TxtFile
from ._pycorpus import PythonCorpus
from ._source import ConcatSource, TextSource

SUFFIXES = (".txt", ".jsonl", ".parquet")
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_WHAT = (
    "a .txt file (one document), a .jsonl file (one document per line, field 'text'), a .parquet file "
    "(column 'text'), a folder of these, or a folder written by datasets' save_to_disk"
)


def open_text(
    path: str | Path | None = None,
    *,
    field: str = "text",
    dataset=None,
    split: str = "train",
    piece_bytes: int = PIECE_BYTES,
) -> TextSource:
    """The text at ``path``; with no path and no dataset, Python's own docs and stdlib (:class:`PythonCorpus`).

    - ``.txt``: one document per file (blank lines do not split it), read in pieces of ``piece_bytes``;
    - ``.jsonl``: one document per non-blank line, the text in ``field``;
    - ``.parquet``: one document per row, the text in column ``field`` (needs ``pyarrow``);
    - a folder: every file above in it and its subfolders (hidden ones skipped), sorted by relative path;
      other files are ignored and counted in ``describe()["ignored"]``; a folder written by
      ``datasets.Dataset.save_to_disk`` is read as that dataset (``split`` picks from a DatasetDict);
    - ``dataset=``: a ``datasets.Dataset``/``DatasetDict`` or a name for ``datasets.load_dataset(name,
      split=split)``, the text in column ``field``.

    Files are checked here (UTF-8, JSON, the field), so a bad one fails before any run starts.
    """
    if dataset is not None:
        if path is not None:
            raise DataError("give either a path or dataset=, not both")
        name = dataset if isinstance(dataset, str) else ""
        return hf.HFDataset(hf.load(dataset, split=split), field=field, name=name)
    if path is None:
        return PythonCorpus()
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p} does not exist; give {_WHAT}, or no path for the built-in Python docs corpus")
    if p.is_dir():
        if any((p / m).is_file() for m in _HF_MARKERS):
            return hf.HFDataset(hf.load(None, split=split, path=p), field=field, name=str(p))
        return _folder(p, field, piece_bytes)
    return _file(p, field, piece_bytes)


def _file(p: Path, field: str, piece_bytes: int) -> TextSource:
    suffix = p.suffix.lower()
    if suffix == ".txt":
        return TxtFile(p, piece_bytes=piece_bytes)
    if suffix == ".jsonl":
        return JsonlFile(p, field=field)
    if suffix == ".parquet":
        return ParquetFile(p, field=field)
    hint = " (decompress it first)" if suffix in (".gz", ".zst", ".bz2", ".xz", ".zip") else ""
    raise DataError(f"{p}: unsupported file type {suffix or '(no suffix)'!r}{hint}; give {_WHAT}")


def _folder(p: Path, field: str, piece_bytes: int) -> TextSource:
    found, ignored = [], Counter()
    for f in p.rglob("*"):
        rel = f.relative_to(p)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        if f.suffix.lower() in SUFFIXES:
            found.append(f)
        else:
            ignored[f.suffix.lower() or "(no suffix)"] += 1
    if not found:
        held = ", ".join(f"{n} {s}" for s, n in sorted(ignored.items()))
        seen = f" (it holds {held})" if ignored else " (it is empty)"
        raise DataError(f"folder {p} has no .txt, .jsonl or .parquet files{seen}; put text files in it or give a file")
    found.sort(key=lambda f: f.relative_to(p).as_posix())
    sources = [_file(f, field, piece_bytes) for f in found]
    names = [f.relative_to(p).as_posix() for f in found]
    return ConcatSource(sources, names=names, kind="folder", path=str(p), extra={"ignored": sum(ignored.values())})

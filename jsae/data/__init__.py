"""Text for training on a model's activations: sources, tokenization and packing into contexts.

>>> source = open_text("corpus/")                     # .txt / .jsonl / .parquet / a folder / a saved dataset
>>> source = open_text()                              # offline: Python's own docs and standard library
>>> stream = ContextStream(source, tokenizer, context_size=128, batch_contexts=32)
>>> it = stream.iterator()
>>> batch = next(it)                                  # int32 [32, stream.bos_positions + 128]
>>> state = it.get_state()                            # JSON; stream.iterator(state) continues from here

Nothing here imports the models or the trainer; ``grain`` is imported when a stream is iterated.
"""

from ._errors import DataError
from ._files import JsonlFile, ParquetFile, TxtFile
from ._hf import HFDataset
from ._paths import open_text
from ._pycorpus import PythonCorpus
from ._sample import SAMPLE_TEXT
from ._source import ConcatSource, Record, TextSource
from ._stream import ContextStream

__all__ = [
    "ConcatSource",
    "ContextStream",
    "DataError",
    "HFDataset",
    "JsonlFile",
    "ParquetFile",
    "PythonCorpus",
    "SAMPLE_TEXT",
    "Record",
    "TextSource",
    "TxtFile",
    "open_text",
]

"""Byte-level BPE tokenizers from GGUF metadata or HF ``tokenizer.json`` (via the ``tokenizers`` package)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._errors import ModelFileError, UnsupportedArchitectureError

# llama.cpp pre-tokenizer names (tokenizer.ggml.pre) -> how text is split before BPE.
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PAD = -1  # the pad id of a TokenBatch: never a real token, so forward can tell padding from text

PRE_TOKENIZERS = ("default", "gpt-2", "gpt2", "smollm", "llama3", "llama-bpe", "llama-v3")


def _pre_tokenizer(pre: str | None):
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt

    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in (None, "default", "gpt-2", "gpt2"):
        return byte_level
    if pre == "smollm":  # llama.cpp: digits one by one, then the GPT-2 regex
        return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
    if pre in ("llama3", "llama-bpe", "llama-v3"):
        return pt.Sequence(
            [pt.Split(Regex(_LLAMA3_REGEX), behavior="isolated"), pt.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    raise UnsupportedArchitectureError(
        f"GGUF pre-tokenizer {pre!r} is not supported (known: {', '.join(PRE_TOKENIZERS)})"
    )


@dataclass(frozen=True)
class TokenBatch:
    """Right-padded token ids that carry their lengths.

    ids: ``[S, T]`` int32, padded with ``-1`` (:data:`PAD`) past each row's length.
    lengths: ``[S]`` int32 number of real tokens per row.
    :func:`jsae.models.forward`, :func:`~jsae.models.map_batches` and :func:`~jsae.models.harvest` take a
    batch directly; ``ids, lengths = batch`` unpacks it for code that wants the two arrays.
    """

    ids: np.ndarray
    lengths: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.ids, self.lengths))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.ids.shape)


class Tokenizer:
    """Encode/decode text; wraps a ``tokenizers.Tokenizer``.

    bos_id/eos_id/pad_id: special ids (None if absent); add_bos: prepend BOS when encoding.
    """

    def __init__(
        self,
        backend,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        add_bos: bool = False,
    ):
        self.backend = backend
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos
        self.pad_id = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (with BOS first if ``add_bos``)."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] + ids) if self.add_bos and self.bos_id is not None else ids

    def encode_batch(self, texts: Sequence[str], *, pad_to: int | None = None, multiple_of: int = 1) -> TokenBatch:
        """A :class:`TokenBatch`: ``ids [B, T]`` padded with -1 and ``lengths [B]``; T is the longest
        length rounded up to ``multiple_of`` (or ``pad_to``)."""
        return pad_sequences([self.encode(t) for t in texts], pad_to=pad_to, multiple_of=multiple_of)

    def decode(self, ids) -> str:
        return self.backend.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False)

    def is_single_token(self, s: str) -> bool:
        """True if ``s`` encodes to exactly one token (e.g. ``" Mary"``)."""
        return len(self.backend.encode(s, add_special_tokens=False).ids) == 1

    def token_id(self, s: str) -> int:
        """The id of ``s``; raises ValueError unless ``s`` is a single token."""
        ids = self.backend.encode(s, add_special_tokens=False).ids
        if len(ids) != 1:
            raise ValueError(f"{s!r} is {len(ids)} tokens ({ids}), not one")
        return ids[0]

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_gguf_metadata(cls, meta: dict) -> Tokenizer:
        """Byte-level BPE from ``tokenizer.ggml.*`` metadata (model ``gpt2``)."""
        from tokenizers import AddedToken, decoders, models
        from tokenizers import Tokenizer as HFTok

        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise UnsupportedArchitectureError(
                f"GGUF tokenizer model {kind!r} is not supported; jsae reads byte-level BPE ('gpt2') tokenizers"
            )
        tokens = list(meta["tokenizer.ggml.tokens"])
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        vocab = {tok: i for i, tok in enumerate(tokens)}
        backend = HFTok(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=False))
        backend.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
        backend.decoder = decoders.ByteLevel()
        types = meta.get("tokenizer.ggml.token_type") or []
        control = [AddedToken(tokens[i], special=True, normalized=False) for i, ty in enumerate(types) if ty == 3]
        if control:
            backend.add_special_tokens(control)
        g = meta.get
        return cls(
            backend,
            bos_id=g("tokenizer.ggml.bos_token_id"),
            eos_id=g("tokenizer.ggml.eos_token_id"),
            pad_id=g("tokenizer.ggml.padding_token_id"),
            add_bos=bool(g("tokenizer.ggml.add_bos_token", False)),
        )

    @classmethod
    def from_dir(cls, directory: str | Path) -> Tokenizer | None:
        """From ``tokenizer.json`` (or GPT-2's ``vocab.json`` + ``merges.txt``); None if neither exists."""
        import json

        from tokenizers import Tokenizer as HFTok

        d = Path(directory)
        try:
            if (d / "tokenizer.json").is_file():
                backend = HFTok.from_file(str(d / "tokenizer.json"))
            elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
                from tokenizers import decoders, models
                from tokenizers import pre_tokenizers as pt

                # what tokenizers.ByteLevelBPETokenizer builds, without reaching into its private backend
                backend = HFTok(models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
                backend.pre_tokenizer = pt.ByteLevel(add_prefix_space=False)
                backend.decoder = decoders.ByteLevel()
            else:
                return None
        except Exception as e:
            raise ModelFileError(f"cannot read the tokenizer in {d}: {e}") from e
        special = {}
        cfg_path = d / "tokenizer_config.json"
        if cfg_path.is_file():
            special = json.loads(cfg_path.read_text())

        def tok_id(name: str) -> int | None:
            return backend.token_to_id(_tok_str(special.get(name))) if special.get(name) else None

        eos = tok_id("eos_token") or backend.token_to_id("<|endoftext|>")
        return cls(
            backend,
            bos_id=tok_id("bos_token"),
            eos_id=eos,
            pad_id=tok_id("pad_token"),
            add_bos=bool(special.get("add_bos_token", False)),
        )

    def save(self, path: str | Path) -> None:
        self.backend.save(str(path))


def _tok_str(t) -> str:
    return t["content"] if isinstance(t, dict) else t


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad_id: int = PAD, *, pad_to: int | None = None, multiple_of: int = 1
) -> TokenBatch:
    """Right-pad token lists into a :class:`TokenBatch` (``ids [B, T]`` int32, ``lengths [B]`` int32).

    pad_id: -1 by default, which :func:`jsae.models.forward` recognises as padding; a real id (the
    tokenizer's ``pad_id``) makes padding look like text to any reader that ignores ``lengths``."""
    lengths = np.array([len(s) for s in seqs], np.int32)
    if lengths.size and lengths.min() == 0:
        raise ValueError("cannot run an empty sequence; every text must produce at least one token")
    T = pad_to or int(-(-int(lengths.max(initial=1)) // multiple_of) * multiple_of)
    if lengths.size and lengths.max() > T:
        raise ValueError(f"a sequence has {lengths.max()} tokens, more than pad_to={T}")
    out = np.full((len(seqs), T), pad_id, np.int32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return TokenBatch(out, lengths)

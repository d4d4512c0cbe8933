"""jsae.data: text sources -> packed token contexts. The oracles are the original text (decode and split on
EOS) and the tokenizer's own encoding of each whole document, never the stream's own output."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from jsae.data import ContextStream, DataError, PythonCorpus, open_text

# Words with ASCII, accents, CJK, emoji, digits and punctuation; lines of a few words.
_WORDS = [
    "the",
    "head",
    "café",
    "naïve",
    "漢字",
    "🙂",
    "x=1;",
    "(a,",
    "b)",
    "2024",
    "3.14",
    "don't",
    "—",
    "def",
    "f(x):",
    "return",
    "Zürich",
    "#",
    '"quoted"',
    "a.b.c",
]


def make_docs(n: int, seed: int, *, min_words: int = 3, max_words: int = 60) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        words = [_WORDS[i] for i in rng.integers(0, len(_WORDS), rng.integers(min_words, max_words))]
        out = []
        for w in words:
            out.append(w)
            out.append(rng.choice([" ", " ", " ", " ", "\n", "  ", "\n\n", "\t", ", "]))
        docs.append("".join(out[:-1]))
    return docs


def oracle_stream(tok, docs) -> list[int]:
    """Each non-empty document encoded whole by the tokenizer, then EOS."""
    out = []
    for d in docs:
        if d:
            ids = tok.encode(d)
            out += (ids[1:] if tok.add_bos else ids) + [tok.eos_id]
    return out


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


def text_tokens(batches, bos_positions=0) -> np.ndarray:
    return np.concatenate([b[:, bos_positions:].reshape(-1) for b in batches]) if batches else np.zeros(0, np.int32)


@pytest.fixture(scope="module")
def tok(smollm2):
    return smollm2[1]


@pytest.fixture(scope="module")
def llama3_tok(tok):
    """SmolLM2's vocabulary with the Llama 3 pre-tokenizer, prepending BOS (Llama style)."""
    from tokenizers import Tokenizer as HFTok

    from jsae.models._tokenizer import Tokenizer, _pre_tokenizer

    backend = HFTok.from_str(tok.backend.to_str())
    backend.pre_tokenizer = _pre_tokenizer("llama3")
    return Tokenizer(backend, bos_id=1, eos_id=tok.eos_id, add_bos=True)


def test_smollm2_gguf_has_no_bos(tok):
    from jsae.models import smollm2_gguf_path
    from jsae.models._gguf_reader import open_gguf

    fields = open_gguf(smollm2_gguf_path()).fields  # the file itself, not jsae's reading of it
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False and tok.add_bos is False
    assert tok.eos_id == fields["tokenizer.ggml.eos_token_id"].contents()
    stream = ContextStream(PythonCorpus(("topics",)), tok, context_size=8, batch_contexts=2)
    assert stream.bos_positions == 0 and stream.batch_shape == (2, 8)
    assert (stream.process_index, stream.process_count) == (0, 1)  # jax.process_index()/count() here


@pytest.mark.parametrize("repeat", [False, 2])
def test_jsonl_stream_is_the_documents_tokens(tok, tmp_path, repeat):
    docs = make_docs(40, 0)
    docs[5] = ""  # an empty document adds nothing
    stream = ContextStream(
        open_text(write_jsonl(tmp_path / "d.jsonl", docs)), tok, context_size=16, batch_contexts=4, repeat=repeat
    )
    batches = list(stream.iterator())
    assert all(b.dtype == np.int32 and b.shape == (4, 16) for b in batches)
    want = oracle_stream(tok, docs) * (1 if repeat is False else repeat)
    n = len(want) // stream.tokens_per_batch
    assert len(batches) == n > 1
    np.testing.assert_array_equal(text_tokens(batches), want[: n * stream.tokens_per_batch])


def test_packed_contexts_decode_to_source_text(tok, tmp_path):
    docs = make_docs(30, 1)
    docs[3] += " a literal <|im_end|> and <|endoftext|> in the text"  # special-token strings stay text
    stream = ContextStream(open_text(write_jsonl(tmp_path / "d.jsonl", docs)), tok, context_size=32, batch_contexts=2)
    flat = text_tokens(list(stream.iterator()))
    ends = np.flatnonzero(flat == tok.eos_id)
    pieces = np.split(flat, ends + 1)[:-1]  # complete documents only; the tail is cut by the last batch
    assert len(pieces) >= 20
    assert [tok.decode(p[:-1]) for p in pieces] == docs[: len(pieces)]


def test_bos_prepended_for_add_bos_tokenizer(llama3_tok, tmp_path):
    docs = make_docs(20, 2)
    stream = ContextStream(
        open_text(write_jsonl(tmp_path / "d.jsonl", docs)), llama3_tok, context_size=12, batch_contexts=3
    )
    assert stream.bos_positions == 1 and stream.batch_shape == (3, 13) and stream.tokens_per_batch == 36
    batches = list(stream.iterator())
    assert batches and all((b[:, 0] == llama3_tok.bos_id).all() for b in batches)
    flat = text_tokens(batches, 1)
    want = oracle_stream(llama3_tok, docs)  # encode() prepends BOS to each document; the stream does not
    np.testing.assert_array_equal(flat, want[: len(flat)])
    assert not (flat == llama3_tok.bos_id).any()


@pytest.mark.parametrize("which", ["tok", "llama3_tok"])
def test_txt_pieces_tokenize_as_the_whole_file(which, request, tmp_path):
    t = request.getfixturevalue(which)
    text = "\n".join(make_docs(60, 3, max_words=12))
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    source = open_text(path, piece_bytes=64)
    assert len(source) > 20 and source.describe()["documents"] == 1
    assert "".join(source[i].text for i in range(len(source))) == text
    stream = ContextStream(source, t, context_size=8, batch_contexts=2)
    flat = text_tokens(list(stream.iterator()), stream.bos_positions)
    want = oracle_stream(t, [text])
    assert len(want) - len(flat) < stream.tokens_per_batch
    np.testing.assert_array_equal(flat, want[: len(flat)])


def test_txt_without_cut_points_is_still_lossless(tok, tmp_path):
    text = "é漢" * 200 + "\n" + "x" * 300  # no spaces or newlines between ASCII: cut at character boundaries
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    source = open_text(tmp_path / "a.txt", piece_bytes=50)
    assert len(source) > 10 and "".join(source[i].text for i in range(len(source))) == text
    flat = text_tokens(list(ContextStream(source, tok, context_size=1, batch_contexts=1).iterator()))  # nothing dropped
    assert flat[-1] == tok.eos_id and tok.decode(flat[:-1]) == text


def _resume_cases(tmp_path):
    docs = make_docs(25, 4)
    book = tmp_path / "folder" / "b_book.txt"
    book.parent.mkdir()
    book.write_text("\n".join(make_docs(30, 5, max_words=10)), encoding="utf-8")
    write_jsonl(tmp_path / "folder" / "a.jsonl", docs)
    return tmp_path / "folder"


@pytest.mark.parametrize("repeat", [False, 3])
def test_resume_from_state_is_exact(tok, tmp_path, repeat):
    folder = _resume_cases(tmp_path)

    def make(threads):
        return ContextStream(
            open_text(folder, piece_bytes=40),
            tok,
            context_size=8,
            batch_contexts=3,
            repeat=repeat,
            read_threads=threads,
        )

    full = list(make(2).iterator())
    assert len(full) > 12
    desc = json.loads(json.dumps(make(0).describe()))  # JSON-able; the same text and settings, the same fingerprint
    assert desc["fingerprint"] == make(2).describe()["fingerprint"] and desc["source"]["files"] == 2
    np.testing.assert_array_equal(np.stack(list(make(0).iterator())), np.stack(full))  # threads change nothing
    it = make(2).iterator()
    for k in range(len(full)):
        if k in (0, 1, 5, len(full) // 2, len(full) - 1):
            state = json.loads(json.dumps(it.get_state()))
            rest = list(make(2).iterator(state))  # a fresh process: source reopened, new stream
            assert len(rest) == len(full) - k
            np.testing.assert_array_equal(np.stack(rest), np.stack(full[k:]))
        next(it)


def test_state_of_another_stream_is_rejected(tok, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", make_docs(20, 6))
    it = ContextStream(open_text(path), tok, context_size=8, batch_contexts=2).iterator()
    next(it)
    other = ContextStream(open_text(path), tok, context_size=16, batch_contexts=2)
    with pytest.raises(DataError, match="another text stream"):
        other.iterator(it.get_state())


def test_process_shards_are_disjoint_and_cover_the_stream(tok, tmp_path):
    docs = make_docs(31, 7)
    source = open_text(write_jsonl(tmp_path / "d.jsonl", docs))
    P, blocks = 3, []
    for p in range(P):
        stream = ContextStream(source, tok, context_size=8, batch_contexts=2, process_index=p, process_count=P)
        lo, hi = stream.shard
        blocks.append((lo, hi))
        flat = text_tokens(list(stream.iterator()))
        want = oracle_stream(tok, docs[lo:hi])
        assert 0 <= len(want) - len(flat) < stream.tokens_per_batch and len(flat) > 0
        np.testing.assert_array_equal(flat, want[: len(flat)])
    assert blocks[0][0] == 0 and blocks[-1][1] == len(docs)
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))  # contiguous, disjoint, union = all
    with pytest.raises(DataError, match="too few for process"):
        ContextStream(source, tok, process_index=0, process_count=len(docs) + 1)


def test_folder_order_and_formats(tok, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    docs = make_docs(12, 8)
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text(docs[0], encoding="utf-8")
    write_jsonl(root / "sub" / "c.jsonl", docs[1:6])
    pq.write_table(pa.table({"text": docs[6:11], "n": list(range(5))}), root / "a.parquet", row_group_size=2)
    (root / "z.txt").write_text(docs[11], encoding="utf-8")
    (root / "README.md").write_text("not read")
    (root / ".hidden.txt").write_text("not read")
    source = open_text(root)
    order = docs[6:11] + docs[0:1] + docs[1:6] + docs[11:]  # a.parquet, b.txt, sub/c.jsonl, z.txt
    assert [source[i].text for i in range(len(source))] == order
    assert source.describe()["ignored"] == 1 and source.describe()["documents"] == 12
    stream = ContextStream(source, tok, context_size=4, batch_contexts=2)
    flat = text_tokens(list(stream.iterator()))
    np.testing.assert_array_equal(flat, oracle_stream(tok, order)[: len(flat)])


def test_parquet_errors(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"body": ["a", "b"], "n": [1, 2]}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"no column 'text' \(columns: body, n\)"):
        open_text(tmp_path / "t.parquet")
    with pytest.raises(DataError, match="type int64, not string"):
        open_text(tmp_path / "t.parquet", field="n")
    assert open_text(tmp_path / "t.parquet", field="body")[1].text == "b"


def test_hf_dataset_saved_and_in_memory(tok, tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = make_docs(15, 9)
    ds = datasets.Dataset.from_dict({"content": docs, "n": list(range(len(docs)))})
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "dict"))
    sources = [
        open_text(tmp_path / "saved", field="content"),
        open_text(dataset=ds, field="content"),
        open_text(tmp_path / "dict", field="content", split="validation"),
    ]
    want = oracle_stream(tok, docs)
    for source in sources:
        assert source.fingerprint == sources[0].fingerprint
        flat = text_tokens(list(ContextStream(source, tok, context_size=8, batch_contexts=2).iterator()))
        np.testing.assert_array_equal(flat, want[: len(flat)])
    with pytest.raises(DataError, match="no column 'text'.*content, n"):
        open_text(tmp_path / "saved")
    with pytest.raises(DataError, match="no split 'train'.*validation"):
        open_text(tmp_path / "dict", field="content")


def test_python_corpus_is_python_docs():
    import json as json_module
    from pydoc_data.topics import topics

    corpus = PythonCorpus()
    assert corpus.describe() == PythonCorpus().describe() and len(corpus) > 1000
    names = [corpus.name_of(i) for i in range(len(corpus))]
    assert names[: len(topics)] == [f"topics:{k}" for k in sorted(topics)]
    assert corpus[0].text == topics[sorted(topics)[0]]
    doc = corpus[names.index("docstrings:json/__init__.py")].text
    assert doc.startswith(inspect.getdoc(json_module)) and inspect.getdoc(json_module.dumps) in doc
    src = corpus[names.index("source:json/__init__.py")].text
    assert src == inspect.getsource(json_module)
    assert not any(n.startswith(("source:encodings/", "docstrings:test/")) or "/test/" in n for n in names)


# -- errors: one clear message each ---------------------------------------------------------------------------
def test_path_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_text(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty.txt is empty"):
        open_text(tmp_path / "empty.txt")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="it is empty"):
        open_text(tmp_path / "d")
    (tmp_path / "d" / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match=r"no \.txt, \.jsonl or \.parquet files \(it holds 1 \.csv\)"):
        open_text(tmp_path / "d")
    with pytest.raises(DataError, match=r"x\.csv: unsupported file type '\.csv'"):
        open_text(tmp_path / "d" / "x.csv")


def test_non_utf8_names_file_and_offset(tmp_path):
    (tmp_path / "latin.txt").write_bytes(b"hello\ncaf\xe9 au lait\n")
    with pytest.raises(DataError, match=r"latin\.txt is not UTF-8 text: byte 0xe9 at byte offset 9"):
        open_text(tmp_path / "latin.txt")
    (tmp_path / "far.txt").write_bytes(("word " * 200).encode() + b"\xff\n")
    with pytest.raises(DataError, match="byte 0xff at byte offset 1000"):
        open_text(tmp_path / "far.txt", piece_bytes=64)  # the bad byte is in a later piece
    (tmp_path / "l.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"l\.jsonl:2 is not UTF-8 text: byte 0xe9 at byte offset 28"):
        open_text(tmp_path / "l.jsonl")


def test_jsonl_errors_name_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n\n{"body": "b"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:3: no field 'text' \(fields: 'body'\); pass field="):
        open_text(p)
    p.write_text('{"text": "a"}\n{"text": "b"\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        open_text(p)
    p.write_text('{"text": 3}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'text' holds a JSON int"):
        open_text(p)
    p.write_text("\n\n")
    with pytest.raises(DataError, match="no JSON lines"):
        open_text(p)


def test_text_shorter_than_a_batch_or_context(tok, tmp_path):
    docs = ["one short document.", "and another"]
    n = len(oracle_stream(tok, docs))
    source = open_text(write_jsonl(tmp_path / "d.jsonl", docs))
    it = ContextStream(source, tok, context_size=n, batch_contexts=2).iterator()
    with pytest.raises(DataError, match=f"holds {n} tokens .*fewer than the {2 * n} needed for one batch"):
        next(it)
    it = ContextStream(source, tok, context_size=n + 1, batch_contexts=1, repeat=True).iterator()
    with pytest.raises(DataError, match=f"holds {n} tokens .*fewer than the {n + 1} needed for one context"):
        next(it)
    assert next(ContextStream(source, tok, context_size=n, batch_contexts=1).iterator()).shape == (1, n)


def test_bad_settings(tok, tmp_path):
    source = open_text(write_jsonl(tmp_path / "d.jsonl", ["some text"]))
    cases = [
        ({"repeat": 0}, "repeat must be"),
        ({"context_size": 0}, "context_size must be"),
        ({"process_index": 2, "process_count": 2}, r"process_index=2 must be in \[0, process_count=2\)"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(DataError, match=msg):
            ContextStream(source, tok, **kwargs)

"""Session-scoped model fixtures shared by the model tests (jsae models and their HF oracles)."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest
from sae_testing import x64  # noqa: F401  (a fixture: tests take it by name as an argument)

from jsae.runtime import prepare_process

prepare_process()  # as the CLI: one CPU device per core (stacks train sharded), persistent compile cache


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's in-memory compiled programs after each test file. XLA:CPU maps about three memory regions
    per loaded executable and never unmaps them while JAX caches it; one pytest process of this suite loads
    tens of thousands of programs, and at the kernel's limit of 65,530 maps per process
    (``vm.max_map_count``) XLA segfaults or aborts in whatever it maps next. Later files read their programs
    back from the persistent compilation cache."""
    yield
    jax.clear_caches()


IOI_CLEAN = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def _randomise(model, seed: int) -> None:
    """Give norms and biases random values too, so a swapped or missing parameter shows up."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "norm" in name or "ln" in name else 0.0))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A random 2-layer Llama with GQA (4 query heads, 2 KV heads), untied embeddings, theta 500."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=500.0,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    _randomise(model, 1)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A random 2-layer GPT-2 (4 heads, d_model 64, context 32)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=97, n_positions=32, n_embd=64, n_layer=2, n_head=4, attn_implementation="eager"
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    _randomise(model, 2)
    path = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def smollm2():
    """jsae's SmolLM2-135M: (model, tokenizer, metadata)."""
    from jsae.models import load

    return load("smollm2-135m")


@pytest.fixture(scope="session")
def hf_smollm2():
    """transformers' own GGUF loading of the same SmolLM2 file: (model, tokenizer)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from jsae.models import smollm2_gguf_path

    p = smollm2_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(p.parent), gguf_file=p.name, dtype=torch.float32
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    return model, tok


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_llama_tok(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama above in a folder with a word-level tokenizer.json (98 words, [UNK] 0, EOS 99)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from jsae.commands.eval import SAMPLE_TEXT

    src, hf = tiny_llama_dir
    d = tmp_path_factory.mktemp("tiny_llama_tok")
    for f in src.iterdir():
        shutil.copy(f, d / f.name)
    words, counts = np.unique(SAMPLE_TEXT.split(), return_counts=True)
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words[np.argsort(-counts, kind="stable")][:98])}}
    vocab["<|endoftext|>"] = len(vocab)  # EOS: separates documents when text is streamed
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(d / "tokenizer.json"))
    return d, hf


@pytest.fixture(scope="session")
def word_text():
    """``word_text(path, n_words, seed=0)`` writes a text file of random words of ``tiny_llama_tok``'s vocabulary."""
    return _word_text


def _word_text(path, n_words: int, seed: int = 0):
    """A text file of ``n_words`` random words of the tiny tokenizer's vocabulary (one token each)."""
    from jsae.commands.eval import SAMPLE_TEXT

    words = sorted(set(SAMPLE_TEXT.split()))[:99]
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(words, 12)) for _ in range(n_words // 12)]
    path.write_text("\n".join(lines) + "\n")
    return path

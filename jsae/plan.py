"""Will a run fit, and how fast might it go? Per-device memory and a FLOP-count speed estimate of a
streaming SAE run (``jsae train --model``), from the model's shapes alone (a ``config.json`` is enough).

>>> p = plan_run(read_model_config("path/to/config.json"), device("tpu-v5e-8"), points="z")
>>> print(p.describe())

Memory per device (bytes) for ``N`` SAEs of input width ``d_in`` spread over ``n`` devices
(``N_dev = ceil(N / n)``), a batch of ``B`` contexts of ``T`` tokens:

- weights: attention sharded by heads (``W_Q``/``W_O`` over query heads, ``W_K``/``W_V`` over key/value
  heads when both divide ``n``, else replicated), the MLP over its hidden units, embeddings and norms
  replicated; in the weights' dtype.
- activations of one forward: the live tensors of one layer (``B*T*(4*D + 3*d_mlp/n + 2*H*dh/n)`` values
  plus the ``B*H/n*T*T`` scores twice) and the captured inputs of this device's SAEs (``B*T*N_dev*d_in``),
  in the activation dtype.
- SAE state: ``N_dev`` SAEs' parameters with their gradients and two Adam moments (4 float32 copies).
- SAE step: one step's activations (``4*N_dev*batch*(3*d_sae + 2*d_in)`` bytes).
- shuffle buffer: ``N_dev*buffer_tokens*d_in`` values in the buffer dtype, plus two float32 staging copies
  of one batch of contexts.

The speed is an *estimate* from FLOP counts against the device's nominal peak at a stated utilisation:
model forward ``2 * matmul params + 4*L*T*H*dh`` (attention scores and mixing over the whole context) per
token plus the last position's logits; SAE steps ``6 * params`` per SAE per token (forward and backward).
It is not a measurement.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import numpy as np

from jsae.activations import input_width, parse_inputs
from jsae.models import ModelConfig, UnknownModelError

GiB = 1 << 30
HEADROOM = 0.9  # of a device's memory a plan may fill (as the trainer's own check)
DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclasses.dataclass(frozen=True)
class Device:
    """A device preset: ``n`` chips of ``memory`` bytes each, each of peak ``peak_flops[dtype]`` FLOP/s."""

    name: str
    n: int
    memory: int
    peak_flops: dict[str, float]
    note: str = ""

    def peak(self, dtype: str) -> float:
        return self.peak_flops.get(dtype, self.peak_flops["float32"])


def _host_memory() -> int:
    """Total host RAM (Linux ``/proc/meminfo``; ``sysconf`` elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _cpu_peak() -> tuple[float, str]:
    """Nominal float32 FLOP/s of this host's cores: cores x clock x FLOP/cycle (from its vector flags)."""
    cores, ghz, flags = os.cpu_count() or 1, 3.0, ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
        mhz = next((ln for ln in info.splitlines() if ln.startswith("cpu MHz")), "")
        ghz = float(mhz.split(":")[1]) / 1000 if mhz else ghz
    except (OSError, ValueError, IndexError):
        pass
    words = set(flags.split())
    per_cycle = 64 if "avx512f" in words else 32 if "fma" in words else 8  # two FMA units x float32 lanes x 2
    return cores * ghz * 1e9 * per_cycle, f"{cores} cores x {ghz:.1f} GHz x {per_cycle} FLOP/cycle (nominal)"


def _cpu(memory: int | None = None) -> Device:
    peak, how = _cpu_peak()
    return Device("cpu", 1, memory or _host_memory(), {"float32": peak, "bfloat16": peak}, f"host RAM; peak {how}")


_V5E = {"float32": 197e12, "bfloat16": 197e12}  # float32 matmuls run as one bf16 pass at JAX's default precision
_H100 = {"float32": 494e12, "bfloat16": 989e12}  # float32: TF32 tensor cores (JAX's default precision), dense
PRESETS = ("cpu", "tpu-v5e-1", "tpu-v5e-8", "h100", "local")


def device(name: str) -> Device:
    """The preset ``name`` (one of :data:`PRESETS`); ``local`` reads this machine's first device."""
    if name == "cpu":
        return _cpu()
    if name == "tpu-v5e-1":
        return Device(name, 1, 16 * GiB, _V5E, "TPU v5e (Colab): 16 GiB HBM, 197 TFLOP/s bf16 per chip")
    if name == "tpu-v5e-8":
        return Device(name, 8, 16 * GiB, _V5E, "8 TPU v5e chips: 16 GiB HBM, 197 TFLOP/s bf16 each")
    if name == "h100":
        return Device(name, 1, 80 * GiB, _H100, "NVIDIA H100 SXM: 80 GiB HBM3, 989 TFLOP/s bf16 dense")
    if name == "local":
        return _local()
    raise ValueError(f"unknown device {name!r}; choose one of {', '.join(PRESETS)}")


def _local() -> Device:
    devs = jax.devices()
    d = devs[0]
    if d.platform == "cpu":
        from jsae.pipeline import available_bytes

        cpu = _cpu(available_bytes(d))
        return dataclasses.replace(cpu, name="local", note=cpu.note.replace("host RAM", "available host RAM"))
    stats = d.memory_stats() or {}
    memory = int(stats.get("bytes_limit") or stats.get("bytes_reservable_limit") or 0)
    kind = d.device_kind
    peak = _V5E if "v5 lite" in kind.lower() or "v5e" in kind.lower() else _H100 if "H100" in kind else {}
    if not memory:
        raise ValueError(f"the local {kind} does not report its memory; name a preset: {', '.join(PRESETS[:-1])}")
    note = f"{len(devs)} x {kind}" + ("" if peak else " (peak unknown: no speed estimate)")
    return Device("local", len(devs), memory, peak or {"float32": 0.0}, note)


# ---------------------------------------------------------------------------------------------------
# The model's shapes


def read_model_config(name_or_path: str | os.PathLike) -> tuple[ModelConfig, list[str]]:
    """A model's :class:`ModelConfig` without its weights: a ``config.json`` file, a checkpoint directory
    holding one, a ``.gguf`` file or ``smollm2-135m`` (metadata only). Returns ``(config, notes)``.

    Reads ``config.json`` with ``jsae.models.config_from_hf``. For a model it refuses (a family or a
    config field jsae cannot load yet), the plan falls back to the shapes alone and says so in ``notes``:
    memory and FLOPs need only the shapes.
    """
    import jsae.models as models

    key = str(name_or_path)
    if key.lower() == "smollm2-135m" or key.endswith(".gguf"):
        return models.read_gguf_config(models.smollm2_gguf_path() if key.lower() == "smollm2-135m" else Path(key)), []
    path = Path(key).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file() or path.suffix != ".json":
        raise UnknownModelError(
            f"cannot plan {key!r}: give a config.json, a checkpoint directory holding one, a .gguf file or "
            "smollm2-135m (no weights are read)"
        )
    c = json.loads(path.read_text())
    name = path.parent.name if path.name == "config.json" else path.stem
    try:
        return models.config_from_hf(c, name=name), []
    except models.UnsupportedArchitectureError as e:
        return _shapes_only(c, name), [f"jsae cannot load this model yet ({e}); the plan uses its shapes only"]


def _shapes_only(c: dict, name: str) -> ModelConfig:
    """The shapes of an HF decoder config (Llama-style keys), for planning only."""
    try:
        H = c["num_attention_heads"]
        return ModelConfig(
            arch="llama",
            n_layers=c["num_hidden_layers"],
            d_model=c["hidden_size"],
            n_heads=H,
            n_kv_heads=c.get("num_key_value_heads") or H,
            d_head=c.get("head_dim") or c["hidden_size"] // H,
            d_mlp=c["intermediate_size"],
            vocab_size=c["vocab_size"],
            n_ctx=c.get("max_position_embeddings", 2048),
            norm_eps=1e-6,
            tied_embeddings=bool(c.get("tie_word_embeddings", False)),
            post_norms=c.get("model_type") in ("gemma2", "gemma3_text"),
            name=name,
        )
    except KeyError as e:
        raise UnknownModelError(f"config.json of {name!r} has no {e.args[0]!r}; it is not a decoder config") from None


@dataclasses.dataclass(frozen=True)
class Params:
    """Parameter counts of a model by part (closed form from its config)."""

    attn_qo: int  # W_Q, W_O (+ their biases), sharded by query heads
    attn_kv: int  # W_K, W_V (+ biases), sharded by key/value heads
    mlp: int
    embed: int  # token (and position) embeddings, the untied unembedding, norms
    unembed: int  # of which the untied unembedding (0 when tied)

    @property
    def total(self) -> int:
        return self.attn_qo + self.attn_kv + self.mlp + self.embed

    @property
    def matmul(self) -> int:
        """Parameters a token multiplies through in the blocks (the embedding lookup and logits apart)."""
        return self.attn_qo + self.attn_kv + self.mlp


def model_params(cfg: ModelConfig) -> Params:
    L, D, H, K, dh, F = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp
    gpt2 = cfg.arch == "gpt2"  # biased projections and LayerNorms, learned positions, ungated MLP
    qo = L * (2 * D * H * dh + (H * dh + D if gpt2 else 0))
    kv = L * (2 * D * K * dh + (2 * K * dh if gpt2 else 0))
    mlp = L * ((2 * D * F + F + D) if gpt2 else 3 * D * F)
    norms_per_layer = (4 if gpt2 else 2) * D + (2 * D if cfg.post_norms else 0)
    unembed = 0 if cfg.tied_embeddings else D * cfg.vocab_size
    pos = cfg.n_ctx * D if gpt2 else 0
    embed = cfg.vocab_size * D + unembed + pos + L * norms_per_layer + (2 if gpt2 else 1) * D
    return Params(qo, kv, mlp, embed, unembed)


def sae_params(arch: str, d_in: int, d_sae: int, k: int | None = None) -> int:
    """Parameters of one SAE of ``arch`` (counted from its initialiser's shapes; nothing is allocated)."""
    from jsae.sae.registry import get, init_stack

    shapes = jax.eval_shape(
        lambda key: init_stack(arch, key, 1, d_in, d_sae, k=k if get(arch).uses_k else None), jax.random.key(0)
    )
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(shapes) if jax.numpy.issubdtype(a.dtype, np.floating)))


# ---------------------------------------------------------------------------------------------------
# The plan


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes per device by part."""

    weights: int
    activations: int
    sae_state: int
    sae_step: int
    buffer: int

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.sae_state + self.sae_step + self.buffer

    def parts(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "activations (one forward)": self.activations,
            "SAE params + Adam": self.sae_state,
            "SAE step": self.sae_step,
            "shuffle buffer": self.buffer,
        }


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run needs per device, whether it fits, and an estimate of its speed."""

    model: str
    cfg: ModelConfig
    device: Device
    n_saes: int
    n_saes_per_device: int
    d_in: int
    d_sae: int
    batch_contexts: int
    context: int
    memory: Memory
    capacity: int  # bytes a run may fill per device (HEADROOM of its memory)
    max_batch_contexts: int  # the largest batch of contexts that fits (0: none)
    model_flops_per_token: float
    sae_flops_per_token: float
    utilisation: float
    tokens_per_s: float | None  # the estimate; None when the device's peak is unknown
    sharding: str
    notes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.capacity

    @property
    def over(self) -> int:
        """Bytes over the capacity (0 when it fits)."""
        return max(0, self.memory.total - self.capacity)

    def advice(self) -> str:
        """What to change so that it fits ('' when it fits)."""
        if self.fits:
            return ""
        if self.max_batch_contexts >= 1:
            return (
                f"lower --batch-contexts from {self.batch_contexts} to {self.max_batch_contexts} (or lower --context)"
            )
        fixed = {k: v for k, v in self.memory.parts().items() if not k.startswith("activations")}
        biggest = max(fixed, key=lambda k: fixed[k])
        return {
            "weights": "use bfloat16 weights (--weights-dtype bfloat16) or a device with more memory per chip, or "
            "more chips (tpu-v5e-8 shards attention by heads and the MLP by its hidden units)",
            "SAE params + Adam": "lower --d-sae or train fewer SAEs per run (--heads L.* for one layer at a time)",
            "SAE step": "lower --batch or --d-sae",
            "shuffle buffer": "lower --buffer-tokens or use --buffer-dtype bfloat16",
        }[biggest] + f" (the largest fixed part is the {biggest}: {self.memory.parts()[biggest] / GiB:.2f} GiB)"

    def refusal(self) -> str:
        """One message saying by how much the run does not fit and what to change."""
        return (
            f"{self.model} does not fit on {self.device.name}: it needs {self.memory.total / GiB:.2f} GiB per device "
            f"but {self.capacity / GiB:.2f} GiB are usable ({HEADROOM:.0%} of {self.device.memory / GiB:.1f} GiB), "
            f"{self.over / GiB:.2f} GiB over"
            + (" even with one context per batch" if self.max_batch_contexts < 1 else "")
            + f"; {self.advice()}"
        )

    def describe(self) -> str:
        d = self.device
        lines = [
            f"{self.model} on {d.name} ({d.n} device{'s' * (d.n > 1)}; {d.note})",
            f"  {self.n_saes} SAEs ({self.n_saes_per_device} per device), d_in {self.d_in}, d_sae {self.d_sae}; "
            f"batch {self.batch_contexts} contexts x {self.context} tokens; weights {self.sharding}",
            "  memory per device:",
        ]
        lines += [f"    {k:<26} {v / GiB:9.3f} GiB" for k, v in self.memory.parts().items()]
        lines.append(
            f"    {'total':<26} {self.memory.total / GiB:9.3f} GiB of {self.capacity / GiB:.2f} GiB usable"
            f" -> {'fits' if self.fits else 'DOES NOT FIT'}"
        )
        lines.append(
            f"  largest batch that fits: {self.max_batch_contexts} contexts of {self.context} tokens"
            if self.max_batch_contexts
            else "  largest batch that fits: none (the fixed parts alone do not fit)"
        )
        speed = (
            f"{self.tokens_per_s:,.0f} tokens/s"
            if self.tokens_per_s is not None
            else "no estimate (unknown peak FLOP/s)"
        )
        lines.append(
            f"  speed ESTIMATE (FLOP count, not a measurement): {speed} at {self.utilisation:.0%} of the nominal peak"
            f" ({self.model_flops_per_token / 1e9:.2f} GFLOP/token forward + "
            f"{self.sae_flops_per_token / 1e9:.2f} GFLOP/token SAE steps)"
        )
        lines += [f"  note: {n}" for n in self.notes]
        if not self.fits:
            lines.append(f"  refused: {self.refusal()}")
        return "\n".join(lines)


def _shards(size: int, n: int) -> int:
    return n if n > 1 and size % n == 0 else 1


def plan_run(
    cfg: ModelConfig,
    dev: Device,
    *,
    points: str = "z",
    heads: str = "all",
    layers: str = "all",
    d_sae: int = 512,
    arch: str = "topk",
    k: int | None = 16,
    batch: int = 1024,
    batch_contexts: int = 32,
    context: int = 128,
    buffer_tokens: int = 16384,
    weights_dtype: str = "float32",
    buffer_dtype: str = "float32",
    activation_dtype: str = "float32",
    utilisation: float = 0.4,
    model: str = "",
    notes: tuple[str, ...] = (),
) -> Plan:
    """The plan of a streaming run of SAEs on ``points``/``heads``/``layers`` of a model with config ``cfg``
    on ``dev`` (arguments as ``jsae train --model``). Pure: reads nothing, allocates nothing."""
    for what, dt in (("weights", weights_dtype), ("buffer", buffer_dtype), ("activation", activation_dtype)):
        if dt not in DTYPES:
            raise ValueError(f"unknown {what} dtype {dt!r}; choose one of {', '.join(DTYPES)}")
    for what, v in (("d_sae", d_sae), ("batch", batch), ("batch_contexts", batch_contexts), ("context", context)):
        if v < 1:
            raise ValueError(f"{what} must be positive, got {v}")
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation is a fraction of the peak in (0, 1], got {utilisation}")
    inputs = parse_inputs(cfg, points, heads=heads, layers=layers)
    d_in = input_width(cfg, inputs[0].point)
    n = dev.n
    n_saes = len(inputs)
    per_dev = -(-n_saes // n)
    p = model_params(cfg)
    s_h = _shards(cfg.n_heads, n)
    s_kv = s_h if s_h > 1 and cfg.n_kv_heads % n == 0 else 1
    s_mlp = _shards(cfg.d_mlp, n)
    w_item, a_item, b_item = DTYPES[weights_dtype], DTYPES[activation_dtype], DTYPES[buffer_dtype]
    weights = w_item * (p.attn_qo // s_h + p.attn_kv // s_kv + p.mlp // s_mlp + p.embed)

    def activations(contexts: int) -> int:
        tokens = contexts * context
        D, H = cfg.d_model, cfg.n_heads
        layer = tokens * (4 * D + 3 * cfg.d_mlp // s_mlp + 2 * H * cfg.d_head // s_h)
        scores = contexts * (H // s_h) * context * context * 2
        return a_item * (layer + scores + tokens * per_dev * d_in)

    def buffer(contexts: int) -> int:
        return per_dev * buffer_tokens * d_in * b_item + 4 * per_dev * contexts * context * d_in * 2

    n_sae = sae_params(arch, d_in, d_sae, k)
    state, step = 16 * per_dev * n_sae, 4 * per_dev * batch * (3 * d_sae + 2 * d_in)
    mem = Memory(weights, activations(batch_contexts), state, step, buffer(batch_contexts))
    capacity = int(HEADROOM * dev.memory)
    fixed = weights + state + step + buffer(0) + activations(0)
    slope = activations(1) + buffer(1) - activations(0) - buffer(0)
    max_b = max(0, (capacity - fixed) // slope)
    model_flops = (
        2 * p.matmul
        + 4 * cfg.n_layers * context * cfg.n_heads * cfg.d_head
        + 2 * cfg.d_model * cfg.vocab_size / context
    )
    sae_flops = 6.0 * n_saes * n_sae
    peak = dev.peak(weights_dtype)
    tps = n * peak * utilisation / (model_flops + sae_flops) if peak else None
    sharding = (
        "on one device"
        if n == 1
        else f"attention Q/O over {s_h}, K/V over {s_kv}, MLP over {s_mlp} of {n} devices, embeddings replicated"
    )
    extra = []
    if n > 1 and s_h == 1:
        extra.append(f"{cfg.n_heads} query heads do not divide over {n} devices: attention weights are replicated")
    return Plan(
        model or cfg.name,
        cfg,
        dev,
        n_saes,
        per_dev,
        d_in,
        d_sae,
        batch_contexts,
        context,
        mem,
        capacity,
        int(max_b),
        float(model_flops),
        sae_flops,
        utilisation,
        tps,
        sharding,
        tuple(notes) + tuple(extra),
    )


__all__ = [
    "DTYPES",
    "Device",
    "Memory",
    "PRESETS",
    "Params",
    "Plan",
    "device",
    "model_params",
    "plan_run",
    "read_model_config",
    "sae_params",
]

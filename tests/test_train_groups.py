"""Groups of SAEs taken through a whole chunk of steps (groups outside, steps inside) and one CPU device
per core: the same training as all SAEs at once on one device."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jsae.sae import relu, stack, topk
from jsae.train import TrainConfig, train
from jsae.train._grouping import auto_group, group_size, step_bytes_per_sae


def _leaves(result):
    return [np.asarray(a) for a in jax.tree.leaves(result.sae)]


@pytest.mark.parametrize("data_kind", ["per_sae", "shared", "iterator"])
def test_grouped_training_equals_all_at_once(data_kind):
    rng = np.random.default_rng(0)
    n, d, m, b = 12, 8, 16, 32
    per_sae = rng.normal(size=(n, 256, d)).astype(np.float32)
    batches = rng.normal(size=(40, n, b, d)).astype(np.float32)
    data = {"per_sae": per_sae, "shared": per_sae[0], "iterator": lambda: iter(batches)}[data_kind]
    sae = stack(relu.init, jax.random.split(jax.random.key(1), n), d, m)
    per_device = n // jax.device_count()  # 12 on one device, 6 each on two
    runs = {}
    for group in (per_device, 2, 1):  # all of a device's SAEs at once, then groups of 2 and of 1
        cfg = TrainConfig(
            steps=40,
            batch_size=b,
            lr=list(np.linspace(1e-3, 6e-3, n)),
            sparsity_coef=0.1,
            chunk_steps=20,
            sae_group=group,
        )
        runs[group] = train(sae, data, cfg, progress=False)
    for group in (2, 1):
        for a, b_ in zip(_leaves(runs[per_device]), _leaves(runs[group]), strict=True):
            np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-6)
        for k in ("loss", "l0", "explained_variance"):  # per-step metrics keep their [chunks, N] order
            np.testing.assert_allclose(runs[per_device].history[k], runs[group].history[k], rtol=1e-5, atol=1e-6)


def test_grouped_topk_with_dead_latents_equals_all_at_once():
    # few tokens and a short dead window: latents die, so the AuxK branch runs in some groups only
    rng = np.random.default_rng(1)
    n, d, m = 4, 8, 32
    data = rng.normal(size=(n, 128, d)).astype(np.float32)
    sae = stack(topk.init, jax.random.split(jax.random.key(2), n), d, m, k=2)
    results = [
        train(
            sae,
            data,
            TrainConfig(steps=60, batch_size=16, lr=3e-3, dead_after_tokens=64, chunk_steps=30, sae_group=g),
            progress=False,
        )
        for g in (n // jax.device_count(), 1)
    ]
    assert results[0].metrics["dead_fraction"].max() > 0, "the test needs dead latents"
    for a, b in zip(_leaves(results[0]), _leaves(results[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "n, batch, d_in, d_sae",
    [(144, 64, 64, 256), (576, 64, 64, 256), (12, 1024, 64, 512), (135, 10, 576, 16), (7, 8, 4, 4)],
)
def test_auto_group_divides_and_fits_the_cache(n, batch, d_in, d_sae):
    g = auto_group(n, batch, d_in, d_sae, cache_bytes=2 << 20)
    per_sae = 4 * (4 * 2 * d_in * d_sae + 2 * batch * (d_sae + d_in))  # params, grads, 2 moments; acts + cotangents
    assert n % g == 0 and g >= 1
    assert g == 1 or g * per_sae <= 2 << 20
    assert g == n or (next(h for h in range(g + 1, n + 1) if n % h == 0)) * per_sae > 2 << 20  # the largest such


def _largest_fitting_divisor(n, per_sae, budget):
    """Brute force: the largest divisor g of n with g * per_sae <= budget (1 if none fits)."""
    fits = [g for g in range(1, n + 1) if n % g == 0 and g * per_sae <= budget]
    return max(fits) if fits else 1


GIB = 1 << 30
README_CASE = dict(n=270, batch=1024, d_in=576, d_sae=2048)  # the README's example: 270 SAEs of 576 x 2048


@pytest.mark.parametrize("free", [None, 1 * GIB, 4 * GIB, 16 * GIB, 80 * GIB, 10**6])
def test_cpu_keeps_the_cache_rule_whatever_the_memory(free):
    for shape in (README_CASE, dict(n=144, batch=64, d_in=64, d_sae=256)):
        args = (shape["n"], shape["batch"], shape["d_in"], shape["d_sae"])
        assert group_size("cpu", *args, free_bytes=free) == auto_group(*args)
    assert auto_group(*(README_CASE[k] for k in ("n", "batch", "d_in", "d_sae"))) == 1  # CPU: one at a time


@pytest.mark.parametrize("backend", ["gpu", "tpu", "cuda", "rocm"])
@pytest.mark.parametrize("free", [None, 2 * GIB, 8 * GIB, 16 * GIB, 32 * GIB, 140 * GIB])
def test_accelerators_take_all_saes_unless_memory_says_split(backend, free):
    n, b, d, m = README_CASE.values()
    g = group_size(backend, n, b, d, m, free_bytes=free)
    # the step's working set per SAE, counted here from its parts: grads + update + new moments (3 copies of
    # the parameters) and activations with cotangents (4 of [B, d_sae] and 4 of [B, d_in]), float32
    per_sae = 4 * (3 * (2 * d * m + m + d) + 4 * b * (m + d))
    assert step_bytes_per_sae(b, d, m) == per_sae
    if free is None or n * per_sae <= 0.8 * free:
        assert g == n
    else:
        assert g == _largest_fitting_divisor(n, per_sae, 0.8 * free) < n
    assert n % g == 0


def test_accelerator_memory_sizes_order_the_groups():
    n, b, d, m = README_CASE.values()
    sizes = [group_size("tpu", n, b, d, m, free_bytes=f) for f in (10**6, 2 * GIB, 8 * GIB, 16 * GIB, 80 * GIB)]
    assert sizes[0] == 1 and sizes[-1] == n  # nothing fits: one at a time; an 80 GiB chip: all at once
    assert sizes == sorted(sizes) and len(set(sizes)) >= 3
    assert group_size("gpu", 7, 8, 4, 4, free_bytes=10**9) == 7


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match=r"unknown backend 'metal'"):
        group_size("metal", 4, 8, 4, 4)


USE_CORES = """
import jax
from jsae.train import use_cpu_cores
print(use_cpu_cores(3), jax.device_count())
jax.numpy.zeros(1).block_until_ready()
print(use_cpu_cores(2))  # set already: that setting stands
"""
TOO_LATE = """
import jax
from jsae.train import use_cpu_cores
jax.numpy.zeros(1).block_until_ready()  # JAX started with its default single CPU device
try:
    use_cpu_cores(2)
except RuntimeError as e:
    print("refused:", e)
"""


def _python(code: str, **env_extra) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu", **env_extra}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.splitlines()


def test_use_cpu_cores_sets_the_device_count_before_jax_starts():
    assert _python(USE_CORES) == ["3 3", "3"]
    refused = _python(TOO_LATE)
    assert len(refused) == 1 and refused[0].startswith("refused:") and "before JAX computes anything" in refused[0]


def test_use_cpu_cores_keeps_an_explicit_xla_flag():
    code = "from jsae.train import use_cpu_cores; print(use_cpu_cores(2))"
    assert _python(code, XLA_FLAGS="--xla_force_host_platform_device_count=5") == ["5"]

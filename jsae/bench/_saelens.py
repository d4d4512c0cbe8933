"""SAELens' own trainer (``sae_lens.SAETrainer``) as its users train per-head SAEs: one head after another.

Used by ``jsae.bench.train`` for a side-by-side column where ``sae_lens`` is importable (``pip install
sae-lens``; it is not a jsae dependency). Everything is SAELens' defaults except what makes the run the
same work as jsae's case: sizes, batch, Adam's learning rate, no logging, no checkpoints, no evals.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import time


def available() -> bool:
    return importlib.util.find_spec("sae_lens") is not None


def _sae(arch: str, d: int, m: int, k: int):
    from sae_lens import StandardTrainingSAE, TopKTrainingSAE  # pyright: ignore[reportMissingImports]  # sae_lens: optional, not a dependency
    from sae_lens.saes.standard_sae import StandardTrainingSAEConfig  # pyright: ignore[reportMissingImports]  # sae_lens: optional, not a dependency
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig  # pyright: ignore[reportMissingImports]  # sae_lens: optional, not a dependency

    if arch == "relu":
        return StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=m, l1_coefficient=0.1))
    if arch == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=m, k=k))
    raise ValueError(f"no SAELens counterpart for arch {arch!r}; use 'relu' or 'topk'")


def _fit(arch: str, d: int, m: int, b: int, k: int, steps: int, x) -> None:
    from sae_lens import LoggingConfig, SAETrainer  # pyright: ignore[reportMissingImports]  # sae_lens: optional, not a dependency
    from sae_lens.config import SAETrainerConfig  # pyright: ignore[reportMissingImports]  # sae_lens: optional, not a dependency

    n_batches = x.shape[0] // b
    batches = (x[(i % n_batches) * b : (i % n_batches + 1) * b] for i in itertools.count())
    cfg = SAETrainerConfig(
        total_training_samples=steps * b,
        train_batch_size_samples=b,
        lr=1e-3,
        lr_end=1e-3,
        logger=LoggingConfig(log_to_wandb=False),
    )
    SAETrainer(cfg, _sae(arch, d, m, k), batches).fit()


def sae_steps_per_s(arch: str, d: int, m: int, b: int, n_heads: int, steps: int, k: int = 16) -> float | None:
    """SAE-steps/s of ``SAETrainer.fit`` over ``n_heads`` SAEs trained one after another (a short warm-up
    fit first, not timed); None where sae_lens is not installed."""
    if not available():
        return None
    import torch

    torch.manual_seed(0)
    x = torch.randn(4 * b, d)
    with _quiet_progress():
        _fit(arch, d, m, b, k, 3, x)
        t = time.perf_counter()
        for _ in range(n_heads):
            _fit(arch, d, m, b, k, steps, x)
        return n_heads * steps / (time.perf_counter() - t)


@contextlib.contextmanager
def _quiet_progress():
    """Silence SAETrainer's progress bar (one per head), as jsae's side runs with ``progress=False``."""
    import sae_lens.training.sae_trainer as trainer  # pyright: ignore[reportMissingImports]  # sae_lens: optional, not a dependency

    saved = trainer.tqdm
    trainer.tqdm = functools.partial(saved, disable=True)
    try:
        yield
    finally:
        trainer.tqdm = saved

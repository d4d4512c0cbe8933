"""What every circuit method returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class HeadScores:
    """Per-head scores ``[H]`` from one method, and what it measured on the way (``info``: task metrics
    of the clean and corrupted runs for the patching methods; the SAEs' mean ``l0``,
    ``explained_variance``, ``dead_fraction`` and ``n_train`` for the SAE-code methods)."""

    method: str
    scores: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

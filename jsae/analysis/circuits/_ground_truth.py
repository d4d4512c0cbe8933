"""Published circuits (GPT-2 small, attn-only-4l) as (layer, head) lists, and the flattened head order
(index ``layer * n_heads + head``)."""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------------------------------
# Published ground truth (GPT-2 small / attn-only-4l), as (layer, head)

GPT2_IOI_HEADS: tuple[tuple[int, int], ...] = (
    # Wang et al. 2022, "Interpretability in the Wild: a Circuit for Indirect Object Identification in
    # GPT-2 small", arXiv:2211.00593, Fig. 2 / Table: the 26 heads of the IOI circuit.
    (0, 1),
    (0, 10),
    (3, 0),  # duplicate token
    (2, 2),
    (4, 11),  # previous token
    (5, 5),
    (5, 8),
    (5, 9),
    (6, 9),  # induction
    (7, 3),
    (7, 9),
    (8, 6),
    (8, 10),  # S-inhibition
    (9, 6),
    (9, 9),
    (10, 0),  # name movers
    (9, 0),
    (9, 7),
    (10, 1),
    (10, 2),
    (10, 6),
    (10, 10),
    (11, 2),
    (11, 9),  # backup name movers
    (10, 7),
    (11, 10),  # negative name movers
)
GPT2_GREATER_THAN_HEADS: tuple[tuple[int, int], ...] = (
    # Hanna, Liu & Variengien 2023, "How does GPT-2 compute greater-than?", arXiv:2305.00586, as encoded
    # in ACDC's ground truth (Conmy et al. 2023, acdc/greaterthan/utils.py CIRCUIT): 9 heads.
    (0, 1),
    (0, 3),
    (0, 5),
    (5, 5),
    (6, 1),
    (6, 9),
    (7, 10),
    (8, 11),
    (9, 1),
)
ATTN_ONLY_4L_DOCSTRING_HEADS: tuple[tuple[int, int], ...] = (
    # Heimersheim & Janiak 2023, "A circuit for Python docstrings in a 4-layer attention-only
    # transformer" (Alignment Forum), as encoded in ACDC (acdc/docstring/utils.py): 6 heads.
    (0, 5),
    (1, 2),
    (1, 4),
    (2, 0),
    (3, 0),
    (3, 6),
)
PUBLISHED_CIRCUITS = {
    ("gpt2", "ioi"): (GPT2_IOI_HEADS, "Wang et al. 2022 (arXiv:2211.00593)"),
    ("gpt2", "greater_than"): (GPT2_GREATER_THAN_HEADS, "Hanna et al. 2023 (arXiv:2305.00586)"),
    ("attn-only-4l", "docstring"): (ATTN_ONLY_4L_DOCSTRING_HEADS, "Heimersheim & Janiak 2023"),
}


def head_mask_from_list(heads, n_layers: int, n_heads: int) -> np.ndarray:
    """``[n_layers * n_heads]`` bool with True at each (layer, head)."""
    m = np.zeros(n_layers * n_heads, bool)
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"head ({layer}, {head}) is outside a model with {n_layers} layers x {n_heads} heads")
        m[layer * n_heads + head] = True
    return m


def head_names(n_layers: int, n_heads: int) -> list[str]:
    """``"L.H"`` names in flattened order."""
    return [f"{layer}.{head}" for layer in range(n_layers) for head in range(n_heads)]

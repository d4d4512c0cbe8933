"""Feature pages for trained SAEs: top-activating contexts, histograms, logit effects and, for per-head ``z``
SAEs, the source positions a latent reads from.

The numbers are library functions (pure, vmapped over SAEs and latents, one streamed pass for every SAE);
the page is one self-contained HTML file built from them.

>>> data = feature_data(model, stack, inputs, tokens, latents=32)   # one pass over tokens [S, T]
>>> html = browse("runs/train-...", heads=[(3, 1), (7, 4)])          # the page (displayed in a notebook)
"""

from ._arrays import HIST_EDGES as HIST_EDGES
from ._arrays import attention_values as attention_values
from ._arrays import batch_top_k as batch_top_k
from ._arrays import directions_in_model_space as directions_in_model_space
from ._arrays import log_histogram as log_histogram
from ._arrays import logit_effects as logit_effects
from ._arrays import merge_top_k as merge_top_k
from ._arrays import pre_activation_constant as pre_activation_constant
from ._arrays import source_contributions as source_contributions
from ._browse import PAGE_NAME as PAGE_NAME
from ._browse import Page as Page
from ._browse import browse as browse
from ._browse import load_saes as load_saes
from ._browser import find_chromium as find_chromium
from ._browser import launch_chromium as launch_chromium
from ._page import head_grid as head_grid
from ._page import page_payload as page_payload
from ._page import read_payload as read_payload
from ._page import render_html as render_html
from ._pass import FeatureData as FeatureData
from ._pass import choose_latents as choose_latents
from ._pass import feature_data as feature_data

__all__ = [
    "PAGE_NAME",
    "HIST_EDGES",
    "FeatureData",
    "Page",
    "attention_values",
    "batch_top_k",
    "browse",
    "choose_latents",
    "directions_in_model_space",
    "feature_data",
    "find_chromium",
    "head_grid",
    "launch_chromium",
    "load_saes",
    "log_histogram",
    "logit_effects",
    "merge_top_k",
    "page_payload",
    "pre_activation_constant",
    "read_payload",
    "render_html",
    "source_contributions",
]

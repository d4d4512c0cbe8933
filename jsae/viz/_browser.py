"""The system's headless Chromium for the feature page (its browser test and its screenshot): where it is and
how it is launched through playwright. Debian's ``chromium`` package (``make chromium``), never a download."""

from __future__ import annotations

import shutil
from typing import Any

CHROMIUM_ARGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def find_chromium() -> str | None:
    """The path of the system's ``chromium`` (or ``chromium-browser``), None when neither is on PATH."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def launch_chromium(playwright: Any) -> Any:
    """A headless, offline system Chromium started through ``playwright`` (``sync_playwright()``'s object)."""
    path = find_chromium()
    if path is None:
        raise FileNotFoundError("no chromium on PATH; install Debian's package (make chromium)")
    return playwright.chromium.launch(executable_path=path, args=list(CHROMIUM_ARGS))

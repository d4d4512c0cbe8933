"""experiments/bench_browse.py runs end to end at its smoke size (the timing run itself is not a test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_browse_smoke_runs_and_prints_the_ratio():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "bench_browse.py"), "--smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("18 heads x 4 latents over 512 tokens") and "ratio" in line, proc.stdout

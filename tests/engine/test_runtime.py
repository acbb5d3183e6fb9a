"""engine/runtime.py: what every stage shares (precision choice, metrics logging)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_metrics_logger_writes_tensorboard_scalars_without_importing_tensorflow(tmp_path: Path) -> None:
    """TensorFlow is installed for the interop tests; TensorBoard's writer would import all of it (3-15 s per
    process) unless told to use its stub. The event file is still written."""
    code = (
        "import sys; from pathlib import Path; from simclrv2.engine.runtime import MetricsLogger;"
        f"m = MetricsLogger(Path({str(tmp_path)!r})); m.log(1, loss=0.5); m.close();"
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False", out.stderr[-2000:]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1

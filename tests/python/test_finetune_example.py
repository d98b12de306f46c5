"""The fine-tuning demonstration (examples/finetune_tiny_dit.py) in its tiny CPU mode: it trains, writes
its curves and numbers, and fine-tuning through the VMonarch backward lowers the VMonarch loss."""
from __future__ import annotations

import importlib.util
import json
import math

from conftest import REPO_ROOT


def load_example():
    spec = importlib.util.spec_from_file_location("finetune_tiny_dit", REPO_ROOT / "examples" / "finetune_tiny_dit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_mode(tmp_path):
    example = load_example()
    run = example.main(["--tiny", "--out", str(tmp_path), "--threads", "1"])
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 500
    saved = json.loads((tmp_path / "results.json").read_text())
    (result,) = saved["seeds"]
    assert set(result["curves"]) == {"vmonarch", "vmonarch_exact", "dense"}
    for curve in result["curves"].values():
        assert len(curve) >= 2 and all(math.isfinite(v) for _, v in curve)
    # the VMonarch runs start from the training-free loss and fine-tuning lowers it
    for label in ("vmonarch", "vmonarch_exact"):
        curve = result["curves"][label]
        assert curve[0][1] == result["vmonarch_training_free"]
        assert curve[-1][1] < curve[0][1]
    assert run["mean_curves"]["dense"][0][1] == result["dense_pretrained"]

"""examples/finetune_tiny_dit.py --tiny end to end (what CI runs), and the pieces of examples/tiny_dit.py."""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import zlib

import pytest
import torch

from conftest import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
import tiny_dit  # noqa: E402

ARMS = ("vmonarch_paper", "vmonarch_exact", "dense_control")


def decode_png(data: bytes):
    """Checks a PNG the strict way (signature, every chunk's CRC, IHDR, the zlib stream of the IDAT chunks
    inflating to exactly height rows of 1 + width·channels bytes); returns (width, height)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + width * channels * depth // 8)
    return width, height


def finite_curve(curve):
    return all(math.isfinite(p["mean"]) and all(math.isfinite(x) for x in p["levels"]) for p in curve)


def test_tiny_demo_runs_and_reports_every_run(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "finetune_tiny_dit.py"), "--tiny", "--out-dir", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("VERDICT ") == 2, proc.stdout
    report = json.loads((out / "finetune_tiny_dit.json").read_text())
    cfg = report["config"]
    assert [s["seed"] for s in report["seeds"]] == [0, 1, 2]
    for seed in report["seeds"]:
        assert len(seed["pretrain_train_loss"]) == cfg["pretrain_steps"]
        assert all(math.isfinite(x) for x in seed["pretrain_train_loss"])
        assert finite_curve(seed["pretrain_curve"]) and seed["pretrain_curve"][-1]["step"] == cfg["pretrain_steps"]
        # pretraining learns: the held-out loss falls well below the untrained model's
        assert seed["pretrain_curve"][-1]["mean"] < 0.8 * seed["pretrain_curve"][0]["mean"]
        assert math.isfinite(seed["vmonarch_training_free"]["mean"])
        assert set(seed["arms"]) == set(ARMS)
        for arm in ARMS:
            run = seed["arms"][arm]
            assert len(run["train_loss"]) == cfg["finetune_steps"] and all(map(math.isfinite, run["train_loss"]))
            assert finite_curve(run["curve"])
            assert run["curve"][0]["step"] == 0 and run["curve"][-1]["step"] == cfg["finetune_steps"]
        # the fine-tuning arms start from the pretrained weights: step 0 is what step 2 evaluated
        assert seed["arms"]["dense_control"]["curve"][0]["mean"] == pytest.approx(seed["dense_pretrained"]["mean"], rel=1e-6)
        assert seed["arms"]["vmonarch_paper"]["curve"][0]["mean"] == pytest.approx(
            seed["vmonarch_training_free"]["mean"], rel=1e-6)
    summary = report["summary"]
    for arm in ARMS[:2]:
        assert math.isfinite(summary["closure"][arm]["closed_fraction"])
        assert isinstance(summary["closure"][arm]["closes_half"], bool)
    assert len(summary["final"]["dense_control"]["levels"]) == len(report["noise_levels"]) == 3
    png = out / "finetune_tiny_dit.png"
    pytest.importorskip("matplotlib", reason="matplotlib draws the PNG (scripts/setup_python.sh installs it)")
    width, height = decode_png(png.read_bytes())
    assert width > 600 and height > 300


def test_demo_rejects_bad_arguments(tmp_path):
    script = str(EXAMPLES / "finetune_tiny_dit.py")
    for args, message in ((["--seeds", "0"], "--seeds: 0, expected >= 1"),
                          (["--size", "9", "--patch", "2"], "--size: 9 is not a multiple of --patch 2"),
                          (["--out-dir", str(REPO_ROOT / "README.md")], "an existing file, expected a directory")):
        proc = subprocess.run([sys.executable, script, "--tiny", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_moving_shapes_are_seeded_bounded_and_move():
    g = lambda: torch.Generator().manual_seed(5)
    a, b = tiny_dit.moving_shapes(4, 6, 16, g()), tiny_dit.moving_shapes(4, 6, 16, g())
    assert a.shape == (4, 3, 6, 16, 16)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, tiny_dit.moving_shapes(4, 6, 16, torch.Generator().manual_seed(6)))
    # every video has a moving shape: consecutive frames differ somewhere by more than anti-aliasing noise
    assert (a[:, :, 1:] - a[:, :, :-1]).abs().amax(dim=(1, 2, 3, 4)).min() > 0.1


def test_patchify_round_trip_and_frame_major_tokens():
    model = tiny_dit.TinyVideoDiT(frames=3, size=8, patch=2, dim=16, depth=1, heads=2)
    video = torch.randn(2, 3, 3, 8, 8)
    tokens = model.patchify(video)
    assert tokens.shape == (2, 3 * 4 * 4, 12)
    torch.testing.assert_close(model.unpatchify(tokens), video, rtol=0, atol=0)
    # token n = i·HW + y·W + x holds the patch of frame i at (y, x)
    i, y, x = 2, 1, 3
    torch.testing.assert_close(tokens[0, i * 16 + y * 4 + x].reshape(3, 2, 2), video[0, :, i, 2 * y:2 * y + 2, 2 * x:2 * x + 2])


def test_vmonarch_backend_falls_back_or_uses_the_operator():
    import vmonarch.torch_impl
    backend = tiny_dit.VMonarchAttention(torch.device("cpu"), 16, entropy_grad=False)
    q, k, v = (torch.randn(2, 2, 3 * 2 * 2, 16, requires_grad=True) for _ in range(3))
    out = backend(q, k, v, (3, 2, 2))
    want = vmonarch.torch_impl.attention(q, k, v, (3, 2, 2), layout="bhsd")
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (q, k, v))
    if not backend.op_backward:
        assert backend.training_path == "vmonarch.torch_impl.attention" and backend.why_not

"""Training throughput: our loop against a reference-equivalent loop, in one run.

    python benchmarks/bench_train.py --decoders small paper --scenes 8 --samples 4096 --steps 5

Both loops train the same decoder on the same batch (``scenes x samples`` rows):
ours (codes folded into a per-shape bias, samples held in memory, bf16 autocast on
CUDA only) and the reference's structure (each row ``[z, x, y, z]`` with the code
repeated per row, fp32, an nn.Embedding for the codes, the whole batch through the
decoder's row forward). Prints samples per second and the ratio; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.decoder import Decoder, decoder_preset  # noqa: E402
from engine.device import resolve_device  # noqa: E402
from engine.training import ShapeSamples, TrainConfig, train  # noqa: E402


def synthetic_samples(n_shapes: int, rows: int, seed: int = 0) -> ShapeSamples:
    rng = np.random.default_rng(seed)
    pos, neg = [], []
    for _ in range(n_shapes):
        p = rng.uniform(-1, 1, (rows, 4)).astype(np.float32)
        p[:, 3] = np.abs(p[:, 3]) * 0.1 + 1e-3
        n = p.copy()
        n[:, 3] *= -1
        pos.append(torch.from_numpy(p))
        neg.append(torch.from_numpy(n))
    return ShapeSamples([f"s{i}" for i in range(n_shapes)], pos, neg, np.zeros((n_shapes, 3)), np.ones(n_shapes))


def reference_loop(decoder_name: str, scenes: int, samples: int, steps: int, device: torch.device) -> float:
    """The reference's training step structure: rows [z, xyz], fp32, weight grads, embedding codes."""
    torch.manual_seed(0)
    dec = Decoder(decoder_preset(decoder_name)).to(device).train()
    L = dec.config.code_length
    codes = torch.nn.Embedding(scenes, L, max_norm=1.0).to(device)
    opt = torch.optim.Adam([{"params": dec.parameters(), "lr": 5e-4}, {"params": codes.parameters(), "lr": 1e-3}])
    xyz = torch.rand(scenes * samples, 3, device=device) * 2 - 1
    sdf = torch.rand(scenes * samples, 1, device=device) * 0.2 - 0.1
    idx = torch.arange(scenes, device=device).repeat_interleave(samples)

    def step() -> None:
        z = codes(idx)
        pred = dec(torch.cat([z, xyz], dim=1)).clamp(-0.1, 0.1)
        loss = (pred - sdf).abs().sum() / len(xyz) + 1e-4 * z.norm(dim=1).sum() / len(xyz)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return scenes * samples * steps / (time.perf_counter() - t0)


def our_loop(
    decoder_name: str, scenes: int, samples: int, steps: int, device: torch.device, amp: bool, compile: bool = False
) -> float:
    """Our ``train`` on ``scenes`` shapes (one batch per epoch); rows per second over the
    epochs after a warm-up of three (which also holds any compilation)."""
    data = synthetic_samples(scenes, 20000)
    warm = 3
    cfg = TrainConfig(
        decoder=decoder_name,
        epochs=warm + steps,
        scenes_per_batch=scenes,
        samples_per_scene=samples,
        snapshot_every=10**9,
        amp=amp,
        compile=compile,
    )
    stamps: list[float] = []
    train(data, cfg, None, device, on_epoch=lambda epoch, scalars, module: stamps.append(time.perf_counter()))
    # each epoch ends by reading its loss from the device, so the stamps follow the GPU
    return scenes * samples * steps / (stamps[-1] - stamps[warm - 1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoders", nargs="+", default=["small", "paper"])
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="also time ours with torch.compile (CUDA)")
    p.add_argument("--json", default="bench_out/train.json")
    args = p.parse_args()
    device = resolve_device(args.device)
    out: dict = {"device": str(device), "scenes": args.scenes, "samples": args.samples}
    for name in args.decoders:
        ref = reference_loop(name, args.scenes, args.samples, args.steps, device)
        ours = our_loop(name, args.scenes, args.samples, args.steps, device, amp=device.type == "cuda")
        out[name] = {"reference_equivalent": ref, "ours": ours, "ratio": ours / ref}
        print(
            f"{name:6s} on {device}: ours {ours:10,.0f} samples/s, reference-equivalent {ref:10,.0f} -> {ours / ref:.2f}x"
        )
        if args.compile and device.type == "cuda":
            comp = our_loop(name, args.scenes, args.samples, args.steps, device, amp=True, compile=True)
            out[name].update(ours_compiled=comp, ratio_compiled=comp / ref)
            print(f"{name:6s} ours + torch.compile {comp:10,.0f} samples/s -> {comp / ref:.2f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

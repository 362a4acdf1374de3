"""Reference-equivalent loops: what facebookresearch/DeepSDF does per point, re-run here as a baseline.

Same arithmetic as the reference's ``create_mesh`` and ``reconstruct.py``, on our
:class:`engine.decoder.Decoder` (identical layout and weights):

* every row is ``[code, x, y, z]`` (the code repeated per point, not folded);
* weight norm is recomputed on every forward (no caching);
* fp32; the mesh grid is evaluated densely in batches of 32^3 rows;
* fitting keeps the decoder's weights requiring gradients, so backward also computes
  the frozen weights' gradients, exactly as the reference does.

Only for benchmarks: the engine never runs these.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.fitting import Observations
from engine.meshing import grid_axis


@torch.no_grad()
def dense_grid_reference(decoder, code: torch.Tensor, resolution: int, max_batch: int = 32**3) -> np.ndarray:
    """(N, N, N) SDF grid the reference's way. code: (L,). Grid as ``engine.meshing``."""
    n = resolution
    dev = next(decoder.parameters()).device
    axis = torch.from_numpy(grid_axis(n)).to(dev)
    code = code.to(dev)
    out = torch.empty(n**3, device=dev)
    total = n**3
    for s in range(0, total, max_batch):
        idx = torch.arange(s, min(s + max_batch, total), device=dev)
        xyz = torch.stack([axis[idx // (n * n)], axis[(idx // n) % n], axis[idx % n]], dim=1)
        rows = torch.cat([code.reshape(1, -1).expand(len(idx), -1), xyz], dim=1)
        out[s : s + len(idx)] = decoder(rows).squeeze(1)
    return out.reshape(n, n, n).cpu().numpy()


def fit_reference(
    decoder,
    obs: Observations,
    code_length: int,
    iterations: int = 800,
    samples: int = 8000,
    lr: float = 5e-3,
    decay_at: int = 400,
    clamp: float = 0.1,
    l2reg: float = 1e-4,
    seed: int = 0,
) -> np.ndarray:
    """The reference's ``reconstruct``: N(0, 0.01^2) start, Adam, lr /10 at ``decay_at``,
    half positive / half negative samples per step; like the reference, each step's
    samples are drawn on the host and copied to the decoder's device. Returns the (L,) code."""
    dev = next(decoder.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    pts = torch.from_numpy(obs.points)
    sdf = torch.from_numpy(obs.sdf)
    pos, neg = torch.nonzero(sdf > 0).squeeze(1), torch.nonzero(sdf <= 0).squeeze(1)
    code = (torch.randn(1, code_length, generator=gen) * 0.01).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([code], lr=lr)
    decoder.eval()
    for p in decoder.parameters():
        p.requires_grad_(True)  # the reference never freezes them
    for step in range(iterations):
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 if step >= decay_at else 1.0)
        half = samples // 2
        idx = torch.cat(
            [
                pos[torch.randint(len(pos), (half,), generator=gen)],
                neg[torch.randint(len(neg), (samples - half,), generator=gen)],
            ]
        )
        xyz, target = pts[idx].to(dev), sdf[idx].clamp(-clamp, clamp).to(dev)
        rows = torch.cat([code.expand(len(idx), -1), xyz], dim=1)
        pred = decoder(rows).squeeze(1).clamp(-clamp, clamp)
        loss = (pred - target).abs().mean() + l2reg * code.pow(2).sum()
        opt.zero_grad()
        decoder.zero_grad()
        loss.backward()
        opt.step()
    return code.detach().reshape(-1).cpu().numpy()

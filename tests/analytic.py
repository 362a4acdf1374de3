"""Analytic SDFs (exact distances) and a tiny auto-decoder trained on them, for tests."""

from __future__ import annotations

import numpy as np
import torch

from engine.decoder import Decoder, DecoderConfig
from engine.meshing import MeshConfig, mesh_sdf
from engine.model import ShapeModel


def sphere(radius: float = 0.5, center=(0.0, 0.0, 0.0)):
    c = torch.tensor(center, dtype=torch.float32)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (x - c.to(x)).norm(dim=-1) - radius

    return f


def box(half=(0.45, 0.3, 0.35), center=(0.0, 0.0, 0.0)):
    h = torch.tensor(half, dtype=torch.float32)
    c = torch.tensor(center, dtype=torch.float32)

    def f(x: torch.Tensor) -> torch.Tensor:
        q = (x - c.to(x)).abs() - h.to(x)
        return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)

    return f


def union(*fns):
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([g(x) for g in fns]).min(dim=0).values

    return f


def table(leg: float = 0.02, gap: float = 0.0):
    """A table: a thin top and four thin legs (thin parts for meshing tests).

    gap > 0 detaches the legs from the top so each is its own component.
    """
    top = box((0.6, 0.03, 0.4), (0.0, 0.3, 0.0))
    half = 0.3 - gap / 2
    legs = [box((leg, half, leg), (sx * 0.5, -0.03 - gap / 2, sz * 0.3)) for sx in (-1, 1) for sz in (-1, 1)]
    return union(top, *legs)


def scaled(fn, factor: float):
    """The SDF of ``fn``'s shape scaled by ``factor`` about the origin."""

    def f(x: torch.Tensor) -> torch.Tensor:
        return factor * fn(x / factor)

    return f


R = 1 / 1.03  # the reference normalisation puts every shape's farthest point here

# Training shapes of the tiny model, already in the reference's normalised frame
# (bounding box centred, farthest point at radius 1/1.03), like real training data.
SHAPES = {
    "sphere": sphere(R),
    "box": scaled(box(), R / float(np.linalg.norm([0.45, 0.3, 0.35]))),
    "capsule_pair": scaled(
        union(sphere(0.3, (-0.35, 0, 0)), sphere(0.3, (0.35, 0, 0)), box((0.35, 0.12, 0.12))), R / 0.65
    ),
}
BOX_HALF = np.array([0.45, 0.3, 0.35]) * R / float(np.linalg.norm([0.45, 0.3, 0.35]))


def analytic_mesh(fn, resolution: int = 96):
    mesh = mesh_sdf(lambda x: fn(x), MeshConfig(resolution=resolution, method="dense"))
    return mesh.vertices, mesh.faces


def sdf_samples(fn, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference-like samples: 90 % near the surface (two noise scales), 10 % uniform."""
    rng = np.random.default_rng(seed)
    verts, faces = analytic_mesh(fn, 64)
    from engine.metrics import sample_surface

    surf, _ = sample_surface(verts, faces, count, seed)
    n_near = int(0.45 * count)
    near = np.concatenate(
        [
            surf[:n_near] + rng.normal(0, np.sqrt(0.005), (n_near, 3)),
            surf[n_near : 2 * n_near] + rng.normal(0, np.sqrt(0.0005), (n_near, 3)),
        ]
    )
    uniform = rng.uniform(-1, 1, (count - 2 * n_near, 3))
    pts = np.concatenate([near, uniform]).astype(np.float32)
    sdf = fn(torch.from_numpy(pts)).numpy().astype(np.float32)
    return pts, sdf


def train_tiny_model(steps: int = 600, seed: int = 0) -> ShapeModel:
    """A 4 x 96 decoder with 8-D codes overfit to ``SHAPES`` (a few seconds on CPU)."""
    torch.manual_seed(seed)
    config = DecoderConfig(
        code_length=8,
        hidden_dims=(96,) * 4,
        skip_layers=(2,),
        norm_layers=(0, 1, 2, 3),
        dropout_layers=(),
        dropout_prob=0.0,
    )
    dec = Decoder(config)
    names = list(SHAPES)
    data = [sdf_samples(SHAPES[n], 20000, seed + i) for i, n in enumerate(names)]
    pts = torch.from_numpy(np.stack([d[0] for d in data]))
    sdf = torch.from_numpy(np.stack([d[1] for d in data]))
    codes = torch.nn.Parameter(torch.randn(len(names), 8) * 0.1)
    opt = torch.optim.Adam([{"params": dec.parameters(), "lr": 2e-3}, {"params": [codes], "lr": 5e-3}])
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(pts.shape[1], (len(names), 2048), generator=gen)
        x = torch.gather(pts, 1, idx[..., None].expand(-1, -1, 3))
        t = torch.gather(sdf, 1, idx)
        pred = dec.forward_codes(codes, x)
        loss = (pred.clamp(-0.1, 0.1) - t.clamp(-0.1, 0.1)).abs().mean() + 1e-4 * codes.pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.eval()
    return ShapeModel(
        decoder=dec,
        codes=codes.detach().clone(),
        shape_names=[f"Analytic/test/{n}" for n in names],
        offsets=np.zeros((len(names), 3), np.float32),
        scales=np.ones(len(names), np.float32),
        info={"class_name": "analytic"},
    )


AMBIGUOUS_STARTS = {"init": "nearest", "restarts": 3, "nearest_starts": 0, "init_std": 0.3}
"""FitConfig fields for :func:`ambiguous_patch`: starts from each training shape, which
then end as distinct shapes (the presets' starts mostly agree on the tiny model)."""


def ambiguous_patch() -> np.ndarray:
    """(40, 3) float32 model-frame points: a small flat patch on the box's top face, where
    a capsule's top also lies, so the tiny model fits several distinct shapes to it."""
    rng = np.random.default_rng(0)
    xz = rng.uniform(-0.08, 0.08, (40, 2))
    return np.stack([0.5 * R + xz[:, 0], np.full(40, BOX_HALF[1]), xz[:, 1]], 1).astype(np.float32)

"""Evaluating a trained model on held-out shapes: fit a code to each shape's SDF samples,
mesh it, and compare with the shape's surface samples in the original frame."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .api import extract_mesh
from .errors import CancelledError, EngineError, InputError
from .fitting import FitConfig, fit_code
from .meshing import MeshConfig
from .metrics import REFERENCE_SAMPLES, chamfer_distance, f_score, normal_consistency, sample_surface
from .model import ShapeModel
from .observations import observations_from_sdf_samples
from .prepare import read_point_cloud_ply
from .progress import ProgressCallback, report, scaled
from .training import read_split


@dataclass
class ShapeScore:
    """Scores of one reconstructed shape (original frame). chamfer: reference definition."""

    name: str
    chamfer: float | None = None
    f_score: dict[str, float] = field(default_factory=dict)
    normal_consistency: float | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass
class EvaluationReport:
    shapes: list[ShapeScore]
    thresholds: tuple[float, ...]

    def summary(self) -> dict:
        ok = [s for s in self.shapes if s.error is None]
        if not ok:
            return {"evaluated": 0, "failed": len(self.shapes)}
        cd = np.array([s.chamfer for s in ok])
        out = {
            "evaluated": len(ok),
            "failed": len(self.shapes) - len(ok),
            "chamfer_mean": float(cd.mean()),
            "chamfer_median": float(np.median(cd)),
            "normal_consistency_mean": float(np.mean([s.normal_consistency for s in ok])),
            "seconds_mean": float(np.mean([s.seconds for s in ok])),
        }
        for t in self.thresholds:
            out[f"f_score@{t:g}_mean"] = float(np.mean([s.f_score[f"{t:g}"] for s in ok]))
        return out

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "shapes": [asdict(s) for s in self.shapes]}

    def table(self) -> str:
        keys = [f"{t:g}" for t in self.thresholds]
        lines = [
            f"{'shape':40s} {'CD x1e3':>9s} " + " ".join(f"{'F@' + k:>8s}" for k in keys) + f" {'NC':>6s} {'s':>6s}"
        ]
        for s in self.shapes:
            if s.error:
                lines.append(f"{s.name[-40:]:40s} error: {s.error}")
                continue
            lines.append(
                f"{s.name[-40:]:40s} {s.chamfer * 1e3:9.4f} "
                + " ".join(f"{s.f_score[k]:8.3f}" for k in keys)
                + f" {s.normal_consistency:6.3f} {s.seconds:6.1f}"
            )
        summ = self.summary()
        if summ.get("evaluated"):
            lines.append(
                f"{'mean / median CD x1e3':40s} {summ['chamfer_mean'] * 1e3:9.4f} / {summ['chamfer_median'] * 1e3:.4f}"
            )
        return "\n".join(lines)


def evaluate_model(
    model: ShapeModel,
    data_dir: str | os.PathLike,
    split: str = "test",
    fit: FitConfig = FitConfig(),
    mesh: MeshConfig = MeshConfig(resolution=128),
    thresholds: tuple[float, ...] = (0.01, 0.02),
    limit: int = 0,
    on_progress: ProgressCallback | None = None,
) -> EvaluationReport:
    """Reconstruct each shape of ``split`` from its SDF samples and score it.

    Thresholds are fractions of the shape's size (its bounding-sphere radius in the
    original frame, 1/(1.03 scale)), so they mean the same for any units.
    """
    data = Path(data_dir)
    split_path = Path(split) if Path(split).is_file() else data / "splits" / f"{split}.json"
    if not split_path.is_file():
        raise InputError(f"no split {split!r} in {data} (expected {split_path})")
    entries = read_split(split_path)
    if limit:
        entries = entries[:limit]
    if not entries:
        raise InputError(f"split {split_path} is empty")
    scores = []
    n = len(entries)
    for k, (ds, cls, inst) in enumerate(entries):
        name = f"{ds}/{cls}/{inst}"
        score = ShapeScore(name)
        t0 = time.perf_counter()
        try:
            obs = observations_from_sdf_samples(data / "SdfSamples" / ds / cls / f"{inst}.npz")
            with np.load(data / "NormalizationParameters" / ds / cls / f"{inst}.npz") as norm:
                offset = norm["offset"].reshape(3).astype(np.float32)
                scale = float(np.asarray(norm["scale"]).reshape(-1)[0])
            truth, truth_normals = read_point_cloud_ply(data / "SurfaceSamples" / ds / cls / f"{inst}.ply")
            result = fit_code(model, obs, fit, scaled(on_progress, k * 100, 80, n * 100))
            rec = extract_mesh(
                model, result.code, mesh, (offset, scale), scaled(on_progress, k * 100 + 80, 20, n * 100)
            )
            pts, normals = sample_surface(rec.vertices, rec.faces, REFERENCE_SAMPLES, seed=k)
            size = 1.0 / (1.03 * scale)
            score.chamfer = chamfer_distance(pts, truth)
            score.f_score = {f"{t:g}": f_score(pts, truth, t * size) for t in thresholds}
            score.normal_consistency = (
                normal_consistency(pts, normals, truth, truth_normals) if truth_normals is not None else float("nan")
            )
        except CancelledError:
            raise
        except (EngineError, OSError, KeyError) as exc:
            score.error = str(exc)
        score.seconds = time.perf_counter() - t0
        scores.append(score)
        report(on_progress, (k + 1) * 100, n * 100, f"evaluating {k + 1}/{n}")
    return EvaluationReport(scores, tuple(thresholds))

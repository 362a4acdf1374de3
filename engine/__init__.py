"""DeepSDF engine: a learned class of shapes as one decoder plus a code per shape.

This package never imports bpy. Importing it is cheap: torch and the rest load on
first use of a name below, so the Blender add-on can read ``engine.protocol``
without PyTorch installed. Public names are listed in ``__all__`` and documented
in ``engine/api.py``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    # errors
    "EngineError": "errors",
    "ModelFileError": "errors",
    "InputError": "errors",
    "NoSurfaceError": "errors",
    "DeviceError": "errors",
    "CancelledError": "errors",
    # model and files
    "Decoder": "decoder",
    "DecoderConfig": "decoder",
    "DECODER_PRESETS": "decoder",
    "decoder_preset": "decoder",
    "ShapeModel": "model",
    "open_model": "model",
    "load_model": "model",
    "save_model": "model",
    "bundled_model_names": "model",
    "import_experiment": "deepsdf_format",
    "export_experiment": "deepsdf_format",
    "resolve_device": "device",
    # fitting, meshing, codes, metrics
    "FitConfig": "fitting",
    "FitResult": "fitting",
    "FIT_PRESETS": "fitting",
    "fit_preset": "fitting",
    "Observations": "fitting",
    "fit_code": "fitting",
    "ObservationConfig": "observations",
    "observations_from_mesh": "observations",
    "observations_from_points": "observations",
    "observations_from_sdf_samples": "observations",
    "Mesh": "meshing",
    "MeshConfig": "meshing",
    "mesh_sdf": "meshing",
    "CodePrior": "latent",
    "interpolate_codes": "latent",
    "SurfaceMetrics": "metrics",
    "compare_meshes": "metrics",
    "chamfer_distance": "metrics",
    "reference_normalization": "frames",
    "load_geometry": "meshio",
    "save_mesh": "meshio",
    "evaluate_sdf": "api",
    "extract_mesh": "api",
    "reconstruct": "api",
    "Reconstruction": "api",
    "sample_codes": "api",
    "training_normalization": "api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static checkers see the real names
    from .api import Reconstruction, evaluate_sdf, extract_mesh, reconstruct, sample_codes, training_normalization
    from .decoder import DECODER_PRESETS, Decoder, DecoderConfig, decoder_preset
    from .deepsdf_format import export_experiment, import_experiment
    from .device import resolve_device
    from .errors import CancelledError, DeviceError, EngineError, InputError, ModelFileError, NoSurfaceError
    from .fitting import FIT_PRESETS, FitConfig, FitResult, Observations, fit_code, fit_preset
    from .frames import reference_normalization
    from .latent import CodePrior, interpolate_codes
    from .meshing import Mesh, MeshConfig, mesh_sdf
    from .meshio import load_geometry, save_mesh
    from .metrics import SurfaceMetrics, chamfer_distance, compare_meshes
    from .model import ShapeModel, bundled_model_names, load_model, open_model, save_model
    from .observations import (
        ObservationConfig,
        observations_from_mesh,
        observations_from_points,
        observations_from_sdf_samples,
    )

"""The bundled models: they load, their training codes mesh close to the generated shapes,
and they complete a scan of a shape they never saw."""

import json

import numpy as np
import pytest
import trimesh

import engine
from engine.frames import reference_normalization, to_model_frame
from engine.model import bundled_model_names
from engine.procedural import generate, shape_mesh
from tests.conftest import REPO

NAMES = bundled_model_names()
# bounds set from the measured quality of the shipped models (docs/quality), with margin
# (measured median over the first six training shapes, model frame: chairs 9.3e-4, tables 8.4e-4)
TRAINING_CHAMFER = {"chairs": 4e-3, "tables": 3e-3}
COMPLETION_CHAMFER = 0.03  # m^2 scale: the example chair is about 1 m tall


def test_models_are_bundled():
    assert {"chairs", "tables"} <= set(NAMES)
    for name in NAMES:
        assert (engine.model.BUNDLED_MODELS_DIR / f"{name}.dsdf").stat().st_size < 10_000_000


def _procedural(name: str):
    family, _, rest = name.split("/")[-1].partition("_")
    index = int(rest.rsplit("_", 1)[1])
    return generate(family, index + 1, seed=0)[index]


@pytest.mark.parametrize("name", NAMES)
def test_training_codes_mesh_to_their_shapes(name):
    model = engine.open_model(name, "cpu")
    assert model.class_name == name and model.code_length == 64
    chamfers = []
    for index in range(6):
        mesh = engine.extract_mesh(model, index, engine.MeshConfig(resolution=64))
        assert trimesh.Trimesh(mesh.vertices, mesh.faces).is_watertight
        v, f = shape_mesh(_procedural(model.shape_names[index]), 96)
        offset, scale = reference_normalization(v)
        metrics = engine.compare_meshes(
            (mesh.vertices, mesh.faces), (to_model_frame(v, offset, scale), f), samples=10000
        )
        chamfers.append(metrics.chamfer)
    assert np.median(chamfers) < TRAINING_CHAMFER[name], chamfers


def test_chairs_complete_the_example_scan():
    model = engine.open_model("chairs", "cpu")
    scan = trimesh.load(REPO / "examples" / "scan_chair.ply", process=False)
    info = json.loads((REPO / "examples" / "scan_chair.json").read_text())
    assert not any(n.endswith(info["source"]) for n in model.shape_names)  # held out
    # the fast preset: what a CPU user runs (the default takes minutes on 2 cores)
    rec = engine.reconstruct(
        model,
        scan.vertices,
        scan.faces,
        sensor=np.array(info["sensor"]),
        fit=engine.fit_preset("fast"),
        mesh=engine.MeshConfig(resolution=64),
    )
    v, f = shape_mesh(_procedural(f"chairs/{info['source']}"), 96)
    metrics = engine.compare_meshes((rec.mesh.vertices, rec.mesh.faces), (v, f), samples=10000)
    assert metrics.chamfer < COMPLETION_CHAMFER, metrics


def test_chairs_recipe_splits_match_the_bundled_model():
    """The recipe's train split is exactly the bundled chairs model's shapes, in order, and
    its held-out split (what docs/quality measures) shares none of them."""
    from engine.training import read_split

    model = engine.open_model("chairs", "cpu")
    train = [f"{ds}/{cls}/{inst}" for ds, cls, inst in read_split(REPO / "recipes" / "chairs_train_split.json")]
    held = [inst for _, _, inst in read_split(REPO / "recipes" / "chairs_heldout_split.json")]
    assert train == list(model.shape_names)
    assert len(held) == 16 and not {n.rsplit("/", 1)[1] for n in train} & set(held)
    assert json.loads((REPO / "examples" / "scan_chair.json").read_text())["source"] in held

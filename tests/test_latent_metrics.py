"""Code prior, interpolation, and metrics against analytic truth."""

import numpy as np
import pytest

from engine.errors import InputError
from engine.latent import CodePrior, interpolate_codes
from engine.metrics import chamfer_distance, compare_meshes, f_score, normal_consistency
from tests.analytic import analytic_mesh, sphere


def test_prior_is_seeded_and_follows_the_codes():
    rng = np.random.default_rng(0)
    codes = rng.normal(2.0, 0.5, (400, 6)) @ np.diag([1, 2, 0.5, 1, 1, 1])
    prior = CodePrior.fit(codes, shrinkage=0.0)
    a, b = prior.sample(5, seed=3), prior.sample(5, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, prior.sample(5, seed=4))
    np.testing.assert_allclose(prior.sample(3, seed=1, temperature=0.0), np.repeat(prior.mean[None], 3, 0), atol=1e-6)
    many = prior.sample(20000, seed=0)
    np.testing.assert_allclose(many.mean(0), codes.mean(0), atol=0.05)
    np.testing.assert_allclose(many.std(0), codes.std(0), rtol=0.05)
    np.testing.assert_allclose(prior.sample(20000, seed=0, temperature=0.5).std(0), 0.5 * codes.std(0), rtol=0.05)


def test_prior_with_fewer_codes_than_dimensions_is_valid():
    codes = np.random.default_rng(0).normal(size=(3, 64))
    samples = CodePrior.fit(codes).sample(10, seed=0)
    assert samples.shape == (10, 64) and np.isfinite(samples).all()


@pytest.mark.parametrize("mode", ["linear", "spherical"])
def test_interpolation_endpoints_exact(mode):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=32).astype(np.float32), rng.normal(size=32).astype(np.float32)
    path = interpolate_codes(a, b, 7, mode)
    assert path.shape == (7, 32)
    assert np.array_equal(path[0], a) and np.array_equal(path[-1], b)
    if mode == "linear":
        np.testing.assert_allclose(path[3], (a + b) / 2, atol=1e-6)
    else:
        norms = np.linalg.norm(path, axis=1)
        np.testing.assert_allclose(norms, np.linspace(norms[0], norms[-1], 7), rtol=1e-5)
    with pytest.raises(InputError):
        interpolate_codes(a, b, 1)
    with pytest.raises(InputError):
        interpolate_codes(a, b[:5], 3)


def test_chamfer_follows_reference_definition():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(5000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    inner, outer = 0.5 * d, 0.6 * d
    # every nearest neighbour is the radial partner: 0.1^2 each way, summed
    assert chamfer_distance(inner, outer) == pytest.approx(0.02, rel=1e-6)
    assert chamfer_distance(inner, inner) == 0.0
    assert f_score(inner, outer, 0.05) == 0.0 and f_score(inner, outer, 0.11) == 1.0
    assert normal_consistency(inner, d, outer, d) == pytest.approx(1.0)
    assert normal_consistency(inner, d, outer, -d) == pytest.approx(1.0)  # orientation-free


def test_compare_meshes_of_two_spheres():
    a = analytic_mesh(sphere(0.5), 64)
    b = analytic_mesh(sphere(0.55), 64)
    m = compare_meshes(a, b, samples=30000)
    assert m.chamfer == pytest.approx(2 * 0.05**2, rel=0.1)
    assert m.f_score["0.02"] < 0.05 and m.normal_consistency > 0.99
    same = compare_meshes(a, a, samples=30000)
    assert same.chamfer < 2e-4 and same.f_score["0.02"] > 0.99

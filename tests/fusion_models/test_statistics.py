"""Known answers for the descriptive tensor statistics."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_models.statistics import lag1_autocorrelation, top_energy_share, unfold


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 4, 5))


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_unfold_matches_tensorly(x: np.ndarray, mode: int) -> None:
    from tensorly.base import unfold as tl_unfold

    np.testing.assert_array_equal(unfold(x, mode), tl_unfold(x, mode))


def test_unfold_kolda_order(x: np.ndarray) -> None:
    # Kolda & Bader (2009): X_(1)[i1, i2 + I2 * i3] = x[i1, i2, i3] (first remaining index fastest)
    u = unfold(x, 0, order="kolda")
    i1, i2, i3 = 2, 3, 4
    assert u[i1, i2 + 4 * i3] == x[i1, i2, i3]
    assert unfold(x, 1, order="kolda")[i2, i1 + 3 * i3] == x[i1, i2, i3]
    # same columns in another order: same singular values
    np.testing.assert_allclose(np.linalg.svd(u, compute_uv=False),
                               np.linalg.svd(unfold(x, 0), compute_uv=False))


def test_unfold_bad_mode(x: np.ndarray) -> None:
    with pytest.raises(ValueError, match="mode must be in"):
        unfold(x, 3)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_rank_one_has_all_energy_on_top(mode: int) -> None:
    rng = np.random.default_rng(1)
    x = np.einsum("i,j,k->ijk", *(rng.standard_normal(n) for n in (6, 20, 30)))
    assert top_energy_share(x, mode, 0.1) == pytest.approx(1.0)


def test_white_noise_energy_is_spread() -> None:
    x = np.random.default_rng(2).standard_normal((20, 40, 40))
    share = top_energy_share(x, 0, 0.1)  # top 2 of 20 singular values
    assert 0.1 < share < 0.2


def test_energy_rejects_nan_and_bad_fraction() -> None:
    x = np.ones((3, 3, 3))
    with pytest.raises(ValueError, match="fraction"):
        top_energy_share(x, 0, 0.0)
    x[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        top_energy_share(x, 0)


def test_white_noise_ac_near_zero() -> None:
    x = np.random.default_rng(3).standard_normal((8, 64, 64))
    for axis in range(3):
        assert abs(lag1_autocorrelation(x, axis)) < 0.05


def test_ramp_ac_is_one() -> None:
    ramp = np.broadcast_to(np.arange(50.0) * 0.3, (4, 50)).copy()
    assert lag1_autocorrelation(ramp, 1) == pytest.approx(1.0)


def test_ac_ignores_nan() -> None:
    rng = np.random.default_rng(4)
    x = np.cumsum(rng.standard_normal((10, 500)), axis=1)  # random walks: AC close to 1
    x[:, ::7] = np.nan
    ac = lag1_autocorrelation(x, 1)
    assert np.isfinite(ac) and ac > 0.9
    assert np.isnan(lag1_autocorrelation(np.full((3, 3), np.nan), 0))

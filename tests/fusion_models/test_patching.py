"""Patch origins, extraction, folding and the leak-free spatial-block split."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_models.patching import block_split, extract_patches, fold_patches, patch_origins


def _stack(seed: int = 0, shape: tuple[int, ...] = (3, 2, 20, 23)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=shape).astype(np.float32)
    a[0, :, 2:7, 3:9] = np.nan  # a masked block
    return a


def _coverage(origins: np.ndarray, size: int, shape: tuple[int, int]) -> np.ndarray:
    """How many footprints cover each pixel, painted one patch at a time."""
    cover = np.zeros(shape, dtype=np.int64)
    for r, c in origins:
        cover[r : r + size, c : c + size] += 1
    return cover


# --- patch_origins ------------------------------------------------------------------------------


def test_origins_known_small_cases() -> None:
    np.testing.assert_array_equal(
        patch_origins(4, 4, size=2, stride=2), [[0, 0], [0, 2], [2, 0], [2, 2]]
    )
    # 5 does not divide by 2: a last patch flush with the bottom/right edge
    np.testing.assert_array_equal(
        patch_origins(5, 4, size=2, stride=2), [[0, 0], [0, 2], [2, 0], [2, 2], [3, 0], [3, 2]]
    )
    np.testing.assert_array_equal(patch_origins(3, 3, size=3, stride=1), [[0, 0]])
    o = patch_origins(10, 7, size=4, stride=3)
    assert sorted(set(o[:, 0].tolist())) == [0, 3, 6]
    assert sorted(set(o[:, 1].tolist())) == [0, 3]
    assert o.dtype == np.int64 and o.shape == (6, 2)


@pytest.mark.parametrize(
    ("height", "width", "size", "stride"),
    [(40, 40, 16, 16), (40, 37, 16, 8), (17, 50, 5, 3), (8, 8, 8, 1), (33, 21, 7, 7)],
)
def test_origins_cover_every_pixel(height: int, width: int, size: int, stride: int) -> None:
    o = patch_origins(height, width, size=size, stride=stride)
    cover = _coverage(o, size, (height, width))
    assert cover.min() >= 1
    assert (o[:, 0] + size).max() == height and (o[:, 1] + size).max() == width
    assert len(np.unique(o, axis=0)) == len(o)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 50, "stride": 10}, "size must not exceed the image"),
        ({"size": 0, "stride": 1}, "size and stride must be >= 1"),
        ({"size": 8, "stride": 0}, "size and stride must be >= 1"),
        ({"size": 8, "stride": 9}, "stride must not exceed size"),
    ],
)
def test_origins_bad_arguments(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        patch_origins(40, 30, **kwargs)


# --- extract / fold -----------------------------------------------------------------------------


def test_extract_known_case() -> None:
    a = np.arange(2 * 4 * 5).reshape(2, 4, 5)
    p = extract_patches(a, np.array([[0, 0], [2, 3]]), 2)
    assert p.shape == (2, 2, 2, 2)
    np.testing.assert_array_equal(p[0, 0], [[0, 1], [5, 6]])
    np.testing.assert_array_equal(p[1, 1], [[33, 34], [38, 39]])
    assert p.dtype == a.dtype


@pytest.mark.parametrize("stride", [8, 5, 3])  # no overlap (but a flush edge), overlap, heavy
def test_round_trip_exact(stride: int) -> None:
    a = _stack()
    o = patch_origins(20, 23, size=8, stride=stride)
    p = extract_patches(a, o, 8)
    assert p.shape == (len(o), 3, 2, 8, 8)
    back = fold_patches(p, o, a.shape)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, a)  # NaN == NaN here


def test_round_trip_integer_and_bool_layers() -> None:
    rng = np.random.default_rng(1)
    cls = rng.integers(0, 95, size=(12, 12), dtype=np.uint8)
    o = patch_origins(12, 12, size=5, stride=2)
    back = fold_patches(extract_patches(cls, o, 5), o, cls.shape)
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, cls)
    mask = rng.random((2, 12, 12)) > 0.5
    back = fold_patches(extract_patches(mask, o, 5), o, mask.shape)
    np.testing.assert_array_equal(back == 1, mask)


def test_fold_averages_overlaps() -> None:
    # two 2x2 patches of a 2x3 image overlapping in the middle column
    patches = np.array([np.full((2, 2), 1.0), np.full((2, 2), 3.0)], dtype=np.float32)
    out = fold_patches(patches, np.array([[0, 0], [0, 1]]), (2, 3))
    np.testing.assert_array_equal(out, [[1, 2, 3], [1, 2, 3]])


def test_fold_is_nan_aware_and_marks_uncovered() -> None:
    patches = np.array([np.full((2, 2), 1.0), np.full((2, 2), 3.0)], dtype=np.float32)
    patches[1, 0, 0] = np.nan  # second patch has a hole over the shared column
    out = fold_patches(patches, np.array([[0, 0], [0, 1]]), (3, 4))
    expected = np.array([[1, 1, 3, np.nan], [1, 2, 3, np.nan], [np.nan] * 4], dtype=np.float32)
    np.testing.assert_array_equal(out, expected)
    all_nan = fold_patches(np.full((1, 2, 2), np.nan), np.array([[0, 0]]), (2, 2))
    assert np.isnan(all_nan).all()


def test_extract_fold_bad_arguments() -> None:
    a = np.zeros((10, 10), dtype=np.float32)
    with pytest.raises(ValueError, match="every patch must lie inside"):
        extract_patches(a, np.array([[0, 7]]), 4)
    with pytest.raises(ValueError, match="integer array of shape"):
        extract_patches(a, np.array([[0.0, 1.0]]), 4)
    with pytest.raises(ValueError, match="at least 2 axes"):
        extract_patches(np.zeros(5), np.array([[0, 0]]), 2)
    with pytest.raises(ValueError, match="one origin per patch"):
        fold_patches(np.zeros((2, 4, 4)), np.array([[0, 0]]), (10, 10))
    with pytest.raises(ValueError, match="lead"):
        fold_patches(np.zeros((1, 3, 4, 4)), np.array([[0, 0]]), (2, 10, 10))


# --- block_split --------------------------------------------------------------------------------


def test_split_fractions_and_determinism() -> None:
    o = patch_origins(400, 400, size=10, stride=10)  # 40 x 40 patches, 10 x 10 blocks of 4 x 4
    labels = block_split(o, size=10, block=4, seed=3)
    assert labels.shape == (len(o),)
    names, counts = np.unique(labels, return_counts=True)
    share = dict(zip(names.tolist(), (counts / len(o)).tolist(), strict=True))
    assert "buffer" not in share  # stride == size and divisible: no footprint overlaps
    assert share["train"] == pytest.approx(0.7, abs=0.02)
    assert share["val"] == pytest.approx(0.15, abs=0.02)
    assert share["test"] == pytest.approx(0.15, abs=0.02)
    np.testing.assert_array_equal(labels, block_split(o, size=10, block=4, seed=3))
    assert not np.array_equal(labels, block_split(o, size=10, block=4, seed=4))


def test_split_patches_follow_their_block() -> None:
    o = patch_origins(64, 64, size=8, stride=8)
    labels = block_split(o, size=8, block=2, seed=0)
    blocks = o // 16
    for b in np.unique(blocks, axis=0):
        assert len(set(labels[(blocks == b).all(axis=1)].tolist())) == 1


def test_split_every_split_nonempty_with_three_blocks() -> None:
    o = patch_origins(8, 24, size=8, stride=8)  # exactly three blocks of one patch
    for seed in range(5):
        assert sorted(block_split(o, size=8, block=1, seed=seed).tolist()) == [
            "test",
            "train",
            "val",
        ]


@pytest.mark.parametrize(("size", "stride", "block"), [(8, 4, 2), (8, 3, 1), (10, 7, 3), (8, 8, 1)])
def test_split_no_pixel_shared_between_splits(size: int, stride: int, block: int) -> None:
    height, width = 83, 77  # not multiples: flush last patches overlap too
    o = patch_origins(height, width, size=size, stride=stride)
    for seed in range(4):
        labels = block_split(o, size=size, block=block, seed=seed)
        painted = {
            name: _coverage(o[labels == name], size, (height, width)) > 0
            for name in ("train", "val", "test")
        }
        assert not (painted["train"] & painted["val"]).any()
        assert not (painted["train"] & painted["test"]).any()
        assert not (painted["val"] & painted["test"]).any()
        assert (labels == "train").sum() > 0
        assert set(labels.tolist()) <= {"train", "val", "test", "buffer"}


def test_split_bad_arguments() -> None:
    o = patch_origins(32, 32, size=8, stride=8)
    with pytest.raises(ValueError, match="fractions must be three shares"):
        block_split(o, size=8, block=2, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="fractions must be three shares"):
        block_split(o, size=8, block=2, fractions=(0.8, 0.2))
    with pytest.raises(ValueError, match="size and block must be >= 1"):
        block_split(o, size=8, block=0)
    with pytest.raises(ValueError, match="integer array of shape"):
        block_split(o[:, 0], size=8, block=2)


def test_blend_window_sums_to_one_at_half_overlap_and_folds_exactly() -> None:
    from fusion_models.patching import blend_window

    w = blend_window(8)
    assert w.shape == (8, 8) and (w > 0).all() and np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
    assert w[3:5, 3:5].min() == w.max()  # the centre counts most
    # the weights of the patches covering an interior pixel at stride size / 2 sum to one
    cover = np.zeros((24, 24))
    for r, c in patch_origins(24, 24, size=8, stride=4):
        cover[r:r + 8, c:c + 8] += w
    np.testing.assert_allclose(cover[4:-4, 4:-4], 1.0, atol=1e-12)
    # any positive weights keep the round trip exact; NaNs are still skipped
    a = _stack()
    o = patch_origins(20, 23, size=8, stride=4)
    np.testing.assert_allclose(fold_patches(extract_patches(a, o, 8), o, a.shape, weights=w), a, rtol=1e-6)
    # a weighted blend of two disagreeing patches leans to the one the pixel is central in
    patches = np.array([np.full((8, 8), 0.0), np.full((8, 8), 1.0)])
    out = fold_patches(patches, np.array([[0, 0], [0, 4]]), (8, 12), weights=w)
    assert out[4, 5] < 0.5 < out[4, 6]  # column 5 is nearer the first patch's centre (3.5) than the second's (7.5)
    with pytest.raises(ValueError, match="weights must be"):
        fold_patches(patches, np.array([[0, 0], [0, 4]]), (8, 12), weights=np.zeros((8, 8)))


def test_blend_ramp_with_a_margin_sums_to_one_where_windows_overlap() -> None:
    """Windows ``size - margin`` apart (the anomaly stage's overlapping tiles): ramps over the
    overlap that sum to one, weight one between; the default ramp is blend_window's."""
    from fusion_models.patching import axis_starts, blend_ramp, blend_window

    h = blend_ramp(16, 4)
    assert (h > 0).all() and np.allclose(h, h[::-1]) and (h[4:12] == 1).all()
    cover = np.zeros(40)
    for s in axis_starts(40, 16, 12):
        cover[s:s + 16] += h
    np.testing.assert_allclose(cover[4:-4], 1.0, atol=1e-12)
    assert list(axis_starts(40, 16, 12)) == [0, 12, 24]
    np.testing.assert_allclose(np.outer(blend_ramp(8), blend_ramp(8)), blend_window(8))
    assert np.allclose(blend_ramp(5, 9), blend_ramp(5, 2))  # the margin is clipped to half the size

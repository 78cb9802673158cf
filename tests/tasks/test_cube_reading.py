"""Reading a cube in bounded pieces: patches cut row by row equal the patches of the whole array."""

from __future__ import annotations

import numpy as np

from fusion_models.patching import extract_patches, patch_origins
from tasks.cube import band_stats, observed_mask, patches_by_rows


def test_patches_by_rows_reads_each_row_of_patches_once_and_matches_the_whole_array() -> None:
    rng = np.random.default_rng(0)
    data = rng.random((3, 2, 40, 23)).astype(np.float32)
    labels = rng.integers(0, 5, (40, 23))
    origins = patch_origins(40, 23, size=8, stride=8)[::2]  # a row-major subset
    reads: list[tuple[int, int]] = []

    def read(y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        reads.append((y0, y1))
        return data[..., y0:y1, :], labels[y0:y1]

    x, y = patches_by_rows(origins, 8, read)
    np.testing.assert_array_equal(x, extract_patches(data, origins, 8))
    np.testing.assert_array_equal(y, extract_patches(labels, origins, 8))
    assert reads == [(int(r), int(r) + 8) for r in np.unique(origins[:, 0])]


def test_observed_mask_and_band_stats_ignore_what_is_not_observed() -> None:
    data = np.ones((2, 2, 3, 3), np.float32)
    data[0, 1, 0, 0] = np.nan  # one band missing: the pixel-date is not observed
    data[1, :, 2, 2] = 100.0  # a value under an invalid flag
    valid = np.ones((2, 3, 3), bool)
    valid[1, 2, 2] = False
    observed = observed_mask(data, valid)
    assert not observed[0, 0, 0] and not observed[1, 2, 2] and observed.sum() == 16
    mean, std = band_stats(data, observed)
    np.testing.assert_array_equal(mean.ravel(), [1.0, 1.0])
    np.testing.assert_array_equal(std.ravel(), [1.0, 1.0])  # zero spread -> 1

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


def test_a_south_up_cube_is_read_north_up_and_its_patches_match(tmp_path) -> None:
    """A cube written with ``y`` ascending (latitude-ordered tools): ``open_cube`` gives the
    north-up view with a matching GeoTransform, and the patch stage cuts the same patches as from
    the north-up cube."""
    import xarray as xr
    from affine import Affine
    from rasterio.crs import CRS

    from tasks.cube import cube_transform, grid_coords, open_cube, spatial_ref
    from tasks.patch import make_patches

    rng = np.random.default_rng(1)
    data = rng.random((3, 2, 48, 40)).astype(np.float32)
    transform = Affine(10.0, 0, 500000.0, 0, -10.0, 4650000.0)
    y, x = grid_coords(transform, 48, 40)
    north = xr.Dataset(
        {"data": (("time", "band", "y", "x"), data, {"grid_mapping": "spatial_ref"}),
         "valid": (("time", "y", "x"), np.ones((3, 48, 40), bool))},
        coords={"time": np.array(["2020-01-01", "2020-01-11", "2020-01-21"], dtype="datetime64[ns]"),
                "band": np.array(["a", "b"], dtype=object), "y": y, "x": x, "spatial_ref": spatial_ref(CRS.from_epsg(32617), transform)},
    )
    north.to_zarr(tmp_path / "north.zarr", zarr_format=3, consolidated=True)
    south = north.isel(y=slice(None, None, -1))
    south["spatial_ref"].attrs["GeoTransform"] = " ".join(
        str(v) for v in Affine(10.0, 0, 500000.0, 0, 10.0, 4650000.0 - 480).to_gdal())
    south.to_zarr(tmp_path / "south.zarr", zarr_format=3, consolidated=True)

    ds = open_cube(tmp_path / "south.zarr")
    assert cube_transform(ds) == transform
    assert ds["spatial_ref"].attrs["GeoTransform"] == " ".join(str(v) for v in transform.to_gdal())
    np.testing.assert_array_equal(ds["data"].values, data)
    for name in ("north", "south"):
        make_patches(tmp_path / f"{name}.zarr", tmp_path / f"p_{name}.zarr", size=16, block=1)
    a, b = (xr.open_zarr(tmp_path / f"p_{n}.zarr") for n in ("north", "south"))
    np.testing.assert_array_equal(a["data"].values, b["data"].values)

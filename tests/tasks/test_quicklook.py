"""Quick-look helpers: artifact keys of stage products, the thumbnails published to Prefect."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.quicklook import product_key, thumbnail_data_uri


def test_product_keys_name_the_cube_so_two_cubes_never_share_one() -> None:
    assert product_key("gapfill", "/d/planet.zarr", "/d/artifacts/planet/filled.zarr") == "gapfill-planet-filled"
    assert product_key("gapfill", "/d/ndvi.zarr", "/d/artifacts/ndvi/filled.zarr") == "gapfill-ndvi-filled"
    assert product_key("compress-png", "c.zarr", "out/cz") == "compress-png-c-cz"


def test_thumbnails_are_resampled_not_decimated(tmp_path: Path) -> None:
    """A figure was shrunk by keeping every n-th pixel: thin text and lines became specks. One-pixel
    stripes (the finest detail a figure has) must average to grey, not alias to one colour."""
    stripes = np.zeros((600, 2400), np.uint8)
    stripes[:, ::2] = 255
    png = tmp_path / "f.png"
    Image.fromarray(stripes).save(png)
    uri = thumbnail_data_uri(png, max_pixels=1000)
    assert uri.startswith("data:image/png;base64,")
    small = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("L"), float)
    assert small.shape == (250, 1000)
    assert 100 < small[5:-5, 5:-5].mean() < 155 and small[5:-5, 5:-5].std() < 20
    Image.fromarray(stripes[:300, :400]).save(png)  # smaller than the limit: kept as it is
    kept = Image.open(io.BytesIO(base64.b64decode(thumbnail_data_uri(png).split(",", 1)[1])))
    assert kept.size == (400, 300)

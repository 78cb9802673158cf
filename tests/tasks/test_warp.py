from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from tasks.catalog import MaskRule
from tasks.warp import Grid, _lattice_offset, _paste, mask_to_clear

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_mask_rules(dtype) -> None:
    m = np.arange(8, dtype=dtype)[None, :]
    assert mask_to_clear(m, MaskRule(clear_values=[1])).astype(int).tolist() == [[0, 1, 0, 0, 0, 0, 0, 0]]
    # MODIS QC: bits 0-1 == 2 or 3 -> not produced
    qc = mask_to_clear(m, MaskRule(invalid_values=[2, 3], bit_mask=3))
    assert qc.astype(int).tolist() == [[1, 1, 0, 0, 1, 1, 0, 0]]
    assert mask_to_clear(m, MaskRule(invalid_bits=[2])).astype(int).tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]


def test_mask_rule_needs_a_rule() -> None:
    with pytest.raises(ValueError, match="clear_values, invalid_bits or invalid_values"):
        MaskRule()


def test_grid_snaps_outward_to_the_lattice() -> None:
    g = Grid.from_bounds("EPSG:32615", (10.5, 20.2, 40.1, 50.0), (3.0, 3.0))
    assert g.bounds == (9.0, 18.0, 42.0, 51.0) and (g.width, g.height) == (11, 11)
    anchored = Grid.from_bounds("EPSG:32615", (10.5, 20.2, 40.1, 50.0), (3.0, 3.0), anchor=(10.5, 50.0))
    assert anchored.transform.c == 10.5 and anchored.transform.f == 50.0
    with pytest.raises(ValueError, match="no pixel"):
        Grid.from_bounds("EPSG:32615", (0, 0, 0, 0), (3.0, 3.0))


def test_lattice_offset_and_paste_clip_at_the_edges() -> None:
    grid = Grid(CRS.from_epsg(32615), Affine(3, 0, 100, 0, -3, 200), 4, 4)

    class Raw:  # the two attributes _lattice_offset reads
        crs = CRS.from_epsg(32615)
        transform = Affine(3, 0, 97, 0, -3, 203)

    assert _lattice_offset(Raw(), grid) == (-1, -1)
    Raw.transform = Affine(3, 0, 98.5, 0, -3, 203)
    assert _lattice_offset(Raw(), grid) is None  # half a pixel off: needs a real warp
    dst = np.zeros((1, 4, 4))
    _paste(np.ones((1, 3, 3)), dst, -1, -1)
    assert dst[0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_set_threads_caps_gdal_and_the_warper_and_rejects_nonsense() -> None:
    from tasks import warp

    try:
        warp.set_threads(1)
        assert warp._gdal_env()["GDAL_NUM_THREADS"] == "1" and warp._warp_threads() == 1
        warp.set_threads(None)
        assert warp._gdal_env()["GDAL_NUM_THREADS"] == "ALL_CPUS" and warp._warp_threads() == warp.WARP_THREADS
        for bad in (0, -2, 1.5, True):
            with pytest.raises(ValueError, match="positive integer"):
                warp.set_threads(bad)  # type: ignore[arg-type]
    finally:
        warp.set_threads(None)


def test_worker_preload_gives_zarr_and_gdal_the_workers_thread_count() -> None:
    from types import SimpleNamespace

    import zarr

    from flows.worker_preload import dask_setup
    from tasks import warp

    worker = SimpleNamespace(state=SimpleNamespace(nthreads=3), address="tcp://127.0.0.1:0")
    before = zarr.config.get("threading.max_workers")
    try:
        dask_setup(worker)
        assert zarr.config.get("threading.max_workers") == 3
        assert warp._gdal_env()["GDAL_NUM_THREADS"] == "3"
    finally:
        zarr.config.set({"threading.max_workers": before})
        warp.set_threads(None)


_FAULTS = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from flows.worker_preload import tune_malloc
    assert tune_malloc()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    a = np.empty(2**20, np.uint8)  # 1 MiB, touched, freed
    a.fill(1)
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_worker_preload_undoes_dasks_malloc_trim_setting() -> None:
    """Under Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` every 1 MiB buffer is a fresh mmap (its pages
    faulted in again each time); after the preload's :func:`tune_malloc` freed buffers are reused."""
    import subprocess

    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    faults = {mode: int(subprocess.run([sys.executable, "-c", _FAULTS, mode], env=env, check=True,
                                       capture_output=True, text=True, cwd=REPO).stdout)
              for mode in ("dask", "tuned")}
    assert faults["dask"] > 50 * 100  # ~256 page faults per buffer
    assert faults["tuned"] < 1000, faults


def test_a_truncated_jpeg2000s_read_error_keeps_gdals_reason(tmp_path: Path, real_fixtures: Path) -> None:
    """rasterio says only "Read failed. See previous exception for details."; the reason kept is
    GDAL's (the previous exception), which tells the operator the file is cut short."""
    import rasterio
    from rasterio.errors import RasterioIOError

    from tasks.warp import read_error

    src = sorted((real_fixtures / "modis_ndvi_sinop").glob("*.jp2"))[0]
    cut = tmp_path / "cut.jp2"
    cut.write_bytes(src.read_bytes()[:9000])
    with pytest.raises(RasterioIOError) as info, rasterio.open(cut) as ds:
        ds.read(1)
    reason = read_error(info.value)
    assert reason.startswith("Read failed: ") and "IReadBlock failed" in reason, reason
    assert read_error(RasterioIOError("no such file")) == "no such file"

"""The patching stage on a tiny generated cube: layout, inverse, checkpointing, failure safety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

import tasks.patch as patch_module
from tasks.checkpoint import manifest_path
from tasks.cube import grid_coords, open_cube, spatial_ref
from tasks.errors import CubeSchemaError
from tasks.patch import make_patches, patch_task, unpatch

# our stores use Zarr v3 consolidated metadata on purpose (tasks.cube): not news in a test
pytestmark = pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")

T, B, H, W = 3, 2, 40, 40
TRANSFORM = Affine(30.0, 0.0, 500010.0, 0.0, -30.0, 4200000.0)


def _cube_dataset(seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.0, 0.5, size=(T, B, H, W)).astype(np.float32)
    data[1, :, 5:17, 20:33] = np.nan  # a cloud
    data[2, 0, 30:, :4] = np.nan  # a band-only gap
    valid = ~np.isnan(data).any(axis=1)
    landcover = rng.choice(np.array([11, 21, 41, 82], dtype=np.uint8), size=(H, W))
    y, x = grid_coords(TRANSFORM, H, W)
    crs = CRS.from_epsg(32615)
    ds = xr.Dataset(
        {
            "data": (
                ("time", "band", "y", "x"),
                data,
                {"grid_mapping": "spatial_ref", "units": "1"},
            ),
            "valid": (("time", "y", "x"), valid),
            "landcover": (
                ("y", "x"),
                landcover,
                {"flag_values": [11, 21, 41, 82], "flag_meanings": "water developed forest crops"},
            ),
        },
        coords={
            "time": pd.date_range("2024-05-01", periods=T, freq="8D").values,
            "band": np.array(["red", "nir"], dtype=object),
            "y": ("y", y, {"units": "m"}),
            "x": ("x", x, {"units": "m"}),
            "spatial_ref": spatial_ref(crs, TRANSFORM),
        },
        attrs={"title": "tiny test cube"},
    )
    return ds


@pytest.fixture
def cube(tmp_path: Path) -> Path:
    path = tmp_path / "cube.zarr"
    _cube_dataset().to_zarr(path, zarr_format=3, consolidated=True, mode="w")
    return path


def _leftovers(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tmp-*"))


def test_layout(cube: Path, tmp_path: Path) -> None:
    out = tmp_path / "patches.zarr"
    manifest = make_patches(cube, out, size=16, stride=8, block=1, batch=5)
    pds = xr.open_zarr(out, consolidated=None)
    n = 16  # 4 x 4 origins: 0, 8, 16, 24
    assert dict(pds.sizes) == {"patch": n, "time": T, "band": B, "py": 16, "px": 16}
    assert pds["data"].dims == ("patch", "time", "band", "py", "px")
    assert pds["data"].dtype == np.float32
    assert pds["valid"].dims == ("patch", "time", "py", "px") and pds["valid"].dtype == bool
    assert pds["landcover"].dims == ("patch", "py", "px") and pds["landcover"].dtype == np.uint8
    assert pds["landcover"].attrs["flag_values"] == [11, 21, 41, 82]
    assert pds["data"].encoding["chunks"] == (5, T, B, 16, 16)
    np.testing.assert_array_equal(pds["patch"], np.arange(n))
    np.testing.assert_array_equal(np.unique(pds["row0"]), [0, 8, 16, 24])
    y, x = grid_coords(TRANSFORM, H, W)
    np.testing.assert_array_equal(pds["y0"], y[pds["row0"].values])
    np.testing.assert_array_equal(pds["x0"], x[pds["col0"].values])
    assert set(pds["split"].values.tolist()) <= {"train", "val", "test", "buffer"}
    assert pds["time"].dtype.kind == "M" and pds["band"].values.tolist() == ["red", "nir"]
    assert pds.attrs["patch_size"] == 16 and pds.attrs["patch_stride"] == 8
    assert pds.attrs["patch_block"] == 1 and pds.attrs["cube_shape"] == [T, B, H, W]
    assert pds.attrs["cube_path"] == str(cube)
    assert CRS.from_wkt(pds.attrs["crs_wkt"]).to_epsg() == 32615
    assert Affine.from_gdal(*map(float, pds.attrs["GeoTransform"].split())) == TRANSFORM
    # patch content is the cube window at its origin
    ds = _cube_dataset()
    k = 5
    r, c = int(pds["row0"][k]), int(pds["col0"][k])
    np.testing.assert_array_equal(
        pds["data"][k].values, ds["data"].values[:, :, r : r + 16, c : c + 16]
    )
    # manifest
    assert manifest.stage == "patch"
    assert manifest.inputs["cube"].startswith("fp-")  # a cube without manifest: content print
    assert manifest.outputs["cube"] == str(cube)
    assert sum(manifest.outputs["patches"].values()) == n
    assert manifest.outputs["patches"]["train"] == int((pds["split"] == "train").sum())
    assert manifest.outputs["shape"] == {"patch": n, "time": T, "band": B, "py": 16, "px": 16}
    assert 0 < manifest.stats["valid_share"] < 1
    assert json.loads(manifest_path(out).read_text())["key"] == manifest.key


def test_a_cube_of_few_blocks_falls_back_to_smaller_blocks(cube: Path, tmp_path: Path, caplog) -> None:
    """40 x 40 px with 8 px patches: blocks of 5 patches (40 px) make one block, all train; the
    split falls back to the largest block that fills every split and says so; the attrs record
    the block used."""
    manifest = make_patches(cube, tmp_path / "p.zarr", size=8, block=5)
    per = manifest.outputs["patches"]
    assert per["train"] > 0 and per["val"] > 0 and per["test"] > 0
    pds = xr.open_zarr(tmp_path / "p.zarr", consolidated=None)
    assert pds.attrs["patch_block"] < 5 and "using blocks of" in caplog.text
    again = make_patches(cube, tmp_path / "q.zarr", size=8, block=pds.attrs["patch_block"])
    assert again.outputs["patches"] == per  # the same split as asking for that block


@pytest.mark.parametrize(("size", "stride"), [(16, 8), (16, 16), (12, 5)])
def test_unpatch_restores_the_cube(cube: Path, tmp_path: Path, size: int, stride: int) -> None:
    out = tmp_path / "patches.zarr"
    make_patches(cube, out, size=size, stride=stride, block=2, batch=4)
    original = open_cube(cube).load()
    back = unpatch(out, tile=16)
    xr.testing.assert_equal(back["data"], original["data"])
    xr.testing.assert_equal(back["valid"], original["valid"])
    xr.testing.assert_equal(back["landcover"], original["landcover"])
    assert back["landcover"].dtype == np.uint8
    assert back["spatial_ref"].attrs["crs_wkt"] == original["spatial_ref"].attrs["crs_wkt"]
    assert back["x"].attrs == original["x"].attrs and back["y"].attrs == original["y"].attrs
    assert "centre of the patch's top-left pixel" in xr.open_zarr(out)["x0"].attrs["description"]
    assert back.attrs.items() >= original.attrs.items()  # the cube's own, and how the copy was made:
    assert back.attrs["fusioncube_stage"] == "unpatch" and back.attrs["software"].startswith("fusioncube ")
    assert [line.split()[2] for line in back.attrs["history"].splitlines()] == ["patch", "unpatch"]
    written = unpatch(out, tmp_path / "back.zarr", tile=16)
    when = {k: back.attrs[k] for k in ("created", "history")}  # the run's own time
    xr.testing.assert_identical(written.load().assign_attrs(when), back)
    assert manifest_path(tmp_path / "back.zarr").exists()


def test_second_call_reuses(cube: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "patches.zarr"
    first = make_patches(cube, out, size=16)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    text = manifest_path(out).read_text()
    with caplog.at_level("INFO"):
        second = make_patches(cube, out, size=16, batch=3)  # batch is not content: still reused
    assert second == first
    assert manifest_path(out).read_text() == text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    assert "reused" in caplog.text


def test_changed_parameters_need_overwrite(cube: Path, tmp_path: Path) -> None:
    out = tmp_path / "patches.zarr"
    first = make_patches(cube, out, size=16)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_patches(cube, out, size=8)
    assert xr.open_zarr(out, consolidated=None).sizes["py"] == 16  # untouched
    second = make_patches(cube, out, size=8, overwrite=True)
    assert second.key != first.key
    assert xr.open_zarr(out, consolidated=None).sizes["py"] == 8
    assert _leftovers(tmp_path) == []


def test_cube_without_data_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zarr"
    _cube_dataset().drop_vars("data").to_zarr(bad, zarr_format=3, consolidated=True)
    with pytest.raises(CubeSchemaError, match=r"bad\.zarr.*no variable 'data'"):
        make_patches(bad, tmp_path / "patches.zarr")
    assert not (tmp_path / "patches.zarr").exists()


def test_bad_arguments(cube: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        make_patches(cube, tmp_path / "p.zarr", batch=0)
    with pytest.raises(ValueError, match="size must not exceed the image"):
        make_patches(cube, tmp_path / "p.zarr", size=64)
    with pytest.raises(ValueError, match="size must be >= 4 pixels"):  # 4096 1-px patches took compress > 10 min
        make_patches(cube, tmp_path / "p.zarr", size=1)
    with pytest.raises(ValueError, match="fractions must be three shares"):
        make_patches(cube, tmp_path / "p.zarr", size=8, fractions=(0.5, 0.5, 0.5))
    assert not (tmp_path / "p.zarr").exists() and _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="not a patches store"):
        unpatch(cube)


def test_failure_midway_leaves_no_half_artifact(
    cube: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "patches.zarr"
    real = patch_module._write_batch
    calls = {"n": 0}

    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        real(*args, **kwargs)

    monkeypatch.setattr(patch_module, "_write_batch", failing)
    with pytest.raises(OSError, match="simulated"):
        make_patches(cube, out, size=8, batch=4)
    assert calls["n"] == 2
    assert not out.exists() and not manifest_path(out).exists()
    assert _leftovers(tmp_path) == []
    # a finished artifact already in place survives a failed overwrite
    monkeypatch.setattr(patch_module, "_write_batch", real)
    done = make_patches(cube, out, size=16)
    calls["n"] = 0
    monkeypatch.setattr(patch_module, "_write_batch", failing)
    with pytest.raises(OSError, match="simulated"):
        make_patches(cube, out, size=8, batch=4, overwrite=True)
    assert xr.open_zarr(out, consolidated=None).sizes["py"] == 16
    assert json.loads(manifest_path(out).read_text())["key"] == done.key
    assert _leftovers(tmp_path) == []


def test_prefect_task_fn(cube: Path, tmp_path: Path) -> None:
    from prefect.logging import disable_run_logger

    out = tmp_path / "patches.zarr"
    with disable_run_logger():
        result = patch_task.fn(str(cube), str(out), size=16, stride=8, block=1)
    assert result["artifact"] == str(out)
    assert result["stage"] == "patch"
    assert sum(result["outputs"]["patches"].values()) == 16
    json.dumps(result)  # plain data, safe for Prefect to persist
    assert patch_task.name == "patch"
    assert patch_task.retries == 1


def test_cli_patches_a_cube_smaller_than_the_default_size(cube: Path, tmp_path: Path, capsys) -> None:
    """A 20 x 30 px cube is smaller than the default 32 px patches: the CLI cuts patches of the
    cube's smaller side, as the pipeline does; a --size asked for is refused with the reason."""
    from flows.cli import main

    small = tmp_path / "small.zarr"
    xr.open_zarr(cube).isel(y=slice(0, 20), x=slice(0, 30)).to_zarr(small, zarr_format=3, consolidated=True)
    assert main(["stage", "patch", "--cube", str(small), "--out", str(tmp_path / "p.zarr")]) == 0
    assert f"{tmp_path / 'p.zarr'}: patches (stage patch)" in capsys.readouterr().out
    assert dict(xr.open_zarr(tmp_path / "p.zarr").sizes)["py"] == 20
    assert main(["stage", "patch", "--cube", str(small), "--out", str(tmp_path / "q.zarr"), "--size", "32"]) == 2
    assert "size must not exceed the image (height=20, width=30)" in capsys.readouterr().err

"""The compression stage on a tiny generated cube: round trip, rate accounting, checkpoint, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from tasks.checkpoint import read_manifest
from tasks.compress import compress_cube, decoded_quality, decompress
from tasks.cube import grid_coords, open_cube, spatial_ref

pytestmark = pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")

T, B, H, W = 4, 2, 32, 32
TRANSFORM = Affine(30.0, 0.0, 500010.0, 0.0, -30.0, 4200000.0)


@pytest.fixture
def cube(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W] / H
    base = np.stack([np.sin(3 * yy + t) * np.cos(2 * xx) for t in range(T)])  # smooth, low rank
    data = (0.3 + 0.1 * base[:, None] * np.array([1.0, 1.5])[None, :, None, None]
            + 0.005 * rng.standard_normal((T, B, H, W))).astype(np.float32)
    data[1, :, 3:9, 2:12] = np.nan  # a gap
    y, x = grid_coords(TRANSFORM, H, W)
    ds = xr.Dataset(
        {"data": (("time", "band", "y", "x"), data, {"grid_mapping": "spatial_ref"}),
         "valid": (("time", "y", "x"), ~np.isnan(data).any(axis=1))},
        coords={"time": pd.date_range("2024-05-01", periods=T, freq="8D").values,
                "band": np.array(["red", "nir"], dtype=object), "y": ("y", y), "x": ("x", x),
                "spatial_ref": spatial_ref(CRS.from_epsg(32615), TRANSFORM)},
    )
    path = tmp_path / "cube.zarr"
    ds.to_zarr(path, zarr_format=3, consolidated=True, mode="w")
    return path


def test_compress_round_trip_rate_and_reuse(cube: Path, tmp_path: Path) -> None:
    out = tmp_path / "comp"
    m = compress_cube(cube, out, patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=2)
    stats = m.stats
    files = ("cores.bin", "finite.bin", "valid.bin", "codec.bin")
    assert all((out / "compressed" / f).exists() for f in files)
    entries = T * B * H * W
    stored = 8 * sum((out / "compressed" / f).stat().st_size for f in files[:3])
    assert stats["bits_per_entry"] >= stored / entries  # every stored bit is counted
    assert 0 < stats["bits_per_entry"] < 32
    # what is shipped: every byte of the store, index included, over the cube's own entries
    shipped = sum(f.stat().st_size for f in (out / "compressed").rglob("*") if f.is_file())
    assert stats["stored_bytes"] == shipped and stats["bits_per_cube_entry"] == pytest.approx(8 * shipped / entries)
    assert stats["bits_per_cube_entry"] > stats["bits_per_entry"] * stats["coded_entries"] / entries
    from tasks.info import describe

    text = "\n".join(describe(out / "compressed"))
    assert f"stored: {shipped / 1e3:.1f} kB, {8 * shipped / entries:.4g} bits per value of the source cube" in text
    dec = open_cube(out / "decoded.zarr").load()
    src = open_cube(cube).load()
    assert dec["data"].attrs["grid_mapping"] == "spatial_ref" and "lossy" in dec.attrs["compression"]
    assert dec["data"].shape == src["data"].shape and dec["data"].dtype == np.float32
    assert np.array_equal(np.isnan(dec["data"].values), np.isnan(src["data"].values))
    assert np.array_equal(dec["valid"].values, src["valid"].values)
    finite = np.isfinite(src["data"].values)
    err = np.abs(dec["data"].values[finite] - src["data"].values[finite])
    peak = np.nanmax(src["data"].values) - np.nanmin(src["data"].values)
    assert 10 * np.log10(peak**2 / np.mean(err**2)) == pytest.approx(stats["psnr_db"], abs=0.01)
    assert stats["psnr_db"] > 25
    # the decoded cube's quality over observed pixels only (valid, every band finite)
    seen = src["valid"].values[:, None] & np.isfinite(src["data"].values).all(axis=1, keepdims=True)
    seen = np.broadcast_to(seen, src["data"].shape)
    ref, got = src["data"].values[seen].astype(np.float64), dec["data"].values[seen].astype(np.float64)
    want = 10 * np.log10((ref.max() - ref.min()) ** 2 / np.mean((got - ref) ** 2))
    assert decoded_quality(out)["psnr_db"] == pytest.approx(want, abs=1e-6)
    assert decoded_quality(out)["nrmse"] == pytest.approx(np.linalg.norm(got - ref) / np.linalg.norm(ref), rel=1e-6)
    again = compress_cube(cube, out, patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=2)
    assert again.key == m.key and again.created == m.created  # reused, not recomputed
    with pytest.raises(FileExistsError, match="overwrite"):
        compress_cube(cube, out, patch=8, ranks=(3, 2, 6, 6), step=0.2, iters=2)
    # decoding again from the compressed folder alone
    again_cube = decompress(out / "compressed", tmp_path / "again.zarr")
    assert np.allclose(again_cube["data"].values, dec["data"].values, equal_nan=True)
    from tasks.checkpoint import read_manifest

    attrs = again_cube.attrs  # they name the decoding, as its manifest does (QA9)
    assert attrs["fusioncube_stage"] == "decompress" and attrs["fusioncube_key"] == read_manifest(tmp_path / "again.zarr").key
    assert "fusioncube decompress" in attrs["history"].splitlines()[-1] and "unpatch" not in attrs["history"]


def test_the_pipelines_patch_store_is_coded_when_it_holds_the_stages_patches(cube: Path, tmp_path: Path) -> None:
    """In the pipeline the stage used to cut the same patches again into its own folder (twice the
    patching, twice the storage): a given patch store with the key the stage would cut is coded
    as it is, and a copy an earlier run cut is removed; one of other patches is not used."""
    from tasks.checkpoint import read_manifest
    from tasks.patch import default_patch_key, make_patches
    from tasks.stages import _compress_current

    shared = tmp_path / "patches.zarr"
    made = make_patches(cube, shared, size=8)
    assert made.key == default_patch_key(cube, 8)  # the key the stage checks is make_patches' own
    out = tmp_path / "comp"
    alone = compress_cube(cube, out, patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=2)  # cuts its own
    assert (out / "patches.zarr").is_dir() and alone.outputs["patches"] == str(out / "patches.zarr")
    m = compress_cube(cube, out, patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=2, patches=shared, overwrite=True)
    assert m.outputs["patches"] == str(shared) and m.stats["bits_per_entry"] == alone.stats["bits_per_entry"]
    assert not (out / "patches.zarr").exists() and read_manifest(out / "patches.zarr") is None
    params = {"patch": 8, "ranks": [3, 2, 6, 6], "step": 0.05, "iters": 2}
    assert _compress_current(str(cube), str(out), params) is not None  # the no-op check follows it
    other = tmp_path / "p16.zarr"
    make_patches(cube, other, size=16)
    m = compress_cube(cube, tmp_path / "comp2", patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=2, patches=other)
    assert m.outputs["patches"] == str(tmp_path / "comp2" / "patches.zarr")


def test_static_layers_travel_losslessly_outside_the_rate(cube: Path, tmp_path: Path) -> None:
    """A land cover layer comes back in the decoded cube bit for bit, with its legend (the decoded
    cube can feed classify or labels); its bytes are reported beside the rate, not in it."""
    ds = xr.open_zarr(cube).load()
    cover = np.random.default_rng(3).choice(np.array([41, 82, 90], np.uint8), (H, W))
    ds["landcover"] = (("y", "x"), cover, {"flag_values": [41, 82, 90], "grid_mapping": "spatial_ref"})
    ds.to_zarr(tmp_path / "lc.zarr", zarr_format=3, consolidated=True, mode="w")
    plain = compress_cube(cube, tmp_path / "plain", patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=2)
    m = compress_cube(tmp_path / "lc.zarr", tmp_path / "comp", patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=2)
    assert m.outputs["static_layers"]["landcover"] > 0 and plain.outputs["static_layers"] == {}
    assert m.stats["bits_per_entry"] == pytest.approx(plain.stats["bits_per_entry"])
    decompress(tmp_path / "comp" / "compressed", tmp_path / "again.zarr")  # from the store alone
    for decoded in (tmp_path / "comp" / "decoded.zarr", tmp_path / "again.zarr"):
        got = xr.open_zarr(decoded)["landcover"]
        assert got.dtype == np.uint8 and np.array_equal(got.values, cover)
        assert list(got.attrs["flag_values"]) == [41, 82, 90]
    from tasks.info import describe

    assert any(line.startswith("  static layers, lossless, beside the rate: landcover (")
               for line in describe(tmp_path / "comp" / "compressed"))


def test_bits_option_and_cli(cube: Path, tmp_path: Path, capsys) -> None:
    from flows.cli import main

    rc = main(["stage", "compress", "--cube", str(cube), "--out", str(tmp_path / "c"), "--bits", "6",
               "--ranks", "2", "2", "4", "4", "--patch", "8", "--iters", "1"])
    assert rc == 0
    assert (tmp_path / "c" / "decoded.zarr").exists()
    text = capsys.readouterr().out
    assert f"{tmp_path / 'c' / 'compressed'}: a compressed cube (TDL, stage compress)" in text
    assert "bits per entry (the codec's cores, masks and tables over " in text and "bits per value of the source cube" in text and "test patches (not trained on): " in text
    assert "decoded cube: " in text and "(observed pixels: PSNR " in text
    with pytest.raises(ValueError, match="give one of step, bits and psnr; got step=0.1, bits=4"):
        compress_cube(cube, tmp_path / "d", patch=8, step=0.1, bits=4)
    assert main(["stage", "compress", "--cube", str(cube), "--out", str(tmp_path / "e"), "--bits", "0"]) == 2
    assert main(["stage", "compress", "--cube", str(cube), "--out", str(tmp_path / "e"), "--iters", "0"]) == 2
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()  # refused before writing


def test_a_psnr_target_picks_the_coarsest_step_that_reaches_it(cube: Path, tmp_path: Path) -> None:
    """``psnr`` instead of a step: the stage searches the step on the training patches; the
    cube's PSNR lands at the target (the test patches are other pixels of the same cube), a higher
    target costs more bits, and one that the ranks cannot reach is refused before anything is
    written, saying why."""
    from flows.cli import main

    low = compress_cube(cube, tmp_path / "low", patch=8, psnr=30.0, iters=2)
    high = compress_cube(cube, tmp_path / "high", patch=8, psnr=40.0, iters=2)
    assert low.params["psnr"] == 30.0 and low.outputs["step"] > high.outputs["step"]
    assert 29.5 < low.stats["psnr_db"] < 31.0 and 39.5 < high.stats["psnr_db"] < 41.0
    assert high.stats["bits_per_entry"] > low.stats["bits_per_entry"]
    with pytest.raises(ValueError, match=r"a PSNR of 90 dB is out of reach with ranks \[1, 1, 2, 2\]"):
        compress_cube(cube, tmp_path / "far", patch=8, psnr=90.0, ranks=(1, 1, 2, 2), iters=1)
    assert not (tmp_path / "far" / "compressed").exists()
    assert main(["stage", "compress", "--cube", str(cube), "--out", str(tmp_path / "cli"), "--psnr", "35",
                 "--patch", "8", "--iters", "1"]) == 0
    assert main(["stage", "compress", "--cube", str(cube), "--out", str(tmp_path / "x"), "--psnr", "35",
                 "--step", "0.1"]) == 2


def test_psnr_and_its_target_are_over_observed_pixels_only(cube: Path, tmp_path: Path) -> None:
    """Pixels that are not observed (``valid`` False: cloud- or alpha-masked) keep their band
    values and are coded, but do not count: one such pixel with an extreme value (a spike 300
    times the observed range) must neither set the PSNR's peak nor be scored, so the reported
    PSNR is the decoded cube's over its observed pixels and a ``psnr`` target is met there."""
    ds = xr.open_zarr(cube).load()
    data, valid = ds["data"].values.copy(), ds["valid"].values.copy()
    data[2, 0, 20, 20] = 100.0  # an unobserved spike (the observed values lie in 0.15..0.5)
    data[3, :, 24:30, 4:12] = 0.9  # a cloud: finite band values, not valid
    valid[2, 20, 20] = valid[3, 24:30, 4:12] = False
    ds["data"].values[:], ds["valid"].values[:] = data, valid
    path = tmp_path / "spiky.zarr"
    ds.to_zarr(path, zarr_format=3, consolidated=True, mode="w")
    seen = np.broadcast_to(valid[:, None] & np.isfinite(data).all(axis=1, keepdims=True), data.shape)
    observed_range = float(data[seen].max() - data[seen].min())

    fixed = compress_cube(path, tmp_path / "fixed", patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=2).stats
    assert fixed["peak_range"] == pytest.approx(observed_range, rel=1e-6)
    assert fixed["distortion_entries"] == "observed"
    # the patches tile the cube: the stage's figure is the decoded cube's over its observed pixels
    assert fixed["psnr_db"] == pytest.approx(decoded_quality(tmp_path / "fixed")["psnr_db"], abs=0.01)
    assert fixed["nrmse"] == pytest.approx(decoded_quality(tmp_path / "fixed")["nrmse"], rel=1e-4)
    for target in (30.0, 40.0):
        m = compress_cube(path, tmp_path / f"at{target:g}", patch=8, psnr=target, iters=2)
        assert m.stats["peak_range"] == pytest.approx(observed_range, rel=1e-6)
        got = decoded_quality(tmp_path / f"at{target:g}")["psnr_db"]
        assert target - 1.0 < got < target + 1.5 and abs(m.stats["psnr_db"] - got) < 0.01


def test_decompress_cli_decodes_a_shipped_store_and_refuses_a_damaged_one(cube: Path, tmp_path: Path, capsys) -> None:
    """Only ``compressed/`` travels: ``fusioncube stage decompress`` gives the cube back; a cut or
    altered stream is named, not decoded into garbage."""
    import shutil

    from flows.cli import main

    compress_cube(cube, tmp_path / "c", patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=1)
    shipped = tmp_path / "shipped"
    shutil.copytree(tmp_path / "c" / "compressed", shipped)
    assert main(["stage", "decompress", "--store", str(shipped), "--out", str(tmp_path / "back.zarr")]) == 0
    back, ref = open_cube(tmp_path / "back.zarr"), open_cube(tmp_path / "c" / "decoded.zarr")
    np.testing.assert_array_equal(back["data"].values, ref["data"].values)
    assert back["spatial_ref"].attrs["crs_wkt"] == ref["spatial_ref"].attrs["crs_wkt"]
    made = read_manifest(tmp_path / "back.zarr")  # made from the store, not from a temporary folder
    assert (made.stage, made.outputs["compressed"], "patches" in made.outputs) == ("decompress", str(shipped), False)
    capsys.readouterr()
    assert main(["info", str(tmp_path / "back.zarr")]) == 0
    assert "made by: stage decompress, " in (info := capsys.readouterr().out) and f"from {shipped}" in info
    # the compress --out folder works too; an existing output is refused before decoding
    assert main(["stage", "decompress", "--store", str(tmp_path / "c"), "--out", str(tmp_path / "back.zarr")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["stage", "decompress", "--store", str(tmp_path / "c"), "--out", str(tmp_path / "b2.zarr")]) == 0

    valid = bytearray((shipped / "valid.bin").read_bytes())
    valid[len(valid) // 2] ^= 0xFF
    (shipped / "valid.bin").write_bytes(bytes(valid))
    assert main(["stage", "decompress", "--store", str(shipped), "--out", str(tmp_path / "bad.zarr")]) == 2
    assert "valid.bin: damaged" in capsys.readouterr().err
    (shipped / "cores.bin").write_bytes((tmp_path / "c" / "compressed" / "cores.bin").read_bytes()[:10])
    with pytest.raises(ValueError, match="cores.bin: truncated"):
        decompress(shipped, tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()
    with pytest.raises(FileNotFoundError, match="nope: no such compressed store"):
        decompress(tmp_path / "nope", tmp_path / "bad.zarr")


def test_a_cube_too_small_for_a_test_split_reports_no_test_score(cube: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.zarr"
    xr.open_zarr(cube).isel(y=slice(0, 10), x=slice(0, 10)).load().to_zarr(small, zarr_format=3, mode="w")
    stats = compress_cube(small, tmp_path / "c", patch=8, step=0.05, iters=2).stats
    assert stats["test"] == {"psnr_db": None, "nrmse": None} and stats["psnr_db"] > 20


def test_segments_and_training_sample_keep_memory_bounded(cube: Path, tmp_path: Path, monkeypatch) -> None:
    """With segments of 3 patches and a training sample of 4 patches the store holds several
    streams, decodes to the same NaN pattern and valid layer, counts every stored bit, and
    costs little against one segment."""
    import json

    import tasks.compress as compress

    whole = compress_cube(cube, tmp_path / "one", patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=2)
    per_patch = 4 * T * B * 8 * 8
    monkeypatch.setattr(compress, "SEGMENT_BYTES", 3 * per_patch)
    monkeypatch.setattr(compress, "TRAIN_BYTES", 4 * per_patch)
    m = compress_cube(cube, tmp_path / "seg", patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=2)
    table = json.loads((tmp_path / "seg" / "compressed" / "segments.json").read_text())
    assert len(table) == m.outputs["segments"] == 6 and sum(s["patches"] for s in table) == 16
    assert m.stats["training_patches"] == 4
    stored = sum((tmp_path / "seg" / "compressed" / f).stat().st_size
                 for f in ("cores.bin", "finite.bin", "valid.bin", "segments.json"))
    assert m.stats["bits_per_entry"] >= 8 * stored / (T * B * H * W)
    assert m.stats["psnr_db"] > whole.stats["psnr_db"] - 1.0
    dec = open_cube(tmp_path / "seg" / "decoded.zarr").load()
    src = open_cube(cube).load()
    assert np.array_equal(np.isnan(dec["data"].values), np.isnan(src["data"].values))
    assert np.array_equal(dec["valid"].values, src["valid"].values)
    finite = np.isfinite(src["data"].values)
    mse = np.mean((dec["data"].values[finite] - src["data"].values[finite]) ** 2)
    peak = np.nanmax(src["data"].values) - np.nanmin(src["data"].values)
    assert 10 * np.log10(peak**2 / mse) == pytest.approx(m.stats["psnr_db"], abs=0.01)


def test_verbose_cli_shows_the_stage_s_info_lines(cube: Path, tmp_path: Path) -> None:
    """``fusioncube -v`` logs the project's INFO lines (Prefect's logging setup had left them
    below the root's WARNING level); without -v they stay hidden. A real process: pytest's own
    logging handlers would hide what the terminal shows."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "flows.cli", "stage", "compress", "--cube", str(cube), "--patch", "8",
            "--ranks", "2", "2", "4", "4", "--iters", "1", "--bits", "6"]
    repo = Path(__file__).resolve().parents[2]
    quiet = subprocess.run([*args, "--out", str(tmp_path / "quiet")], cwd=repo, capture_output=True, text=True)
    loud = subprocess.run([args[0], "-m", "flows.cli", "-v", *args[3:], "--out", str(tmp_path / "loud")],
                          cwd=repo, capture_output=True, text=True)
    assert quiet.returncode == 0 and loud.returncode == 0, loud.stderr[-2000:]
    assert "INFO" in loud.stderr and "tasks.compress - compress:" in loud.stderr
    assert "bits per entry, PSNR" in loud.stderr and "bits per entry, PSNR" not in quiet.stderr


def test_a_store_without_segment_table_decodes_as_one_segment(cube: Path, tmp_path: Path) -> None:
    """Stores written before segments (one stream per file, no segments.json) still decode."""
    compress_cube(cube, tmp_path / "c", patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=1)
    (tmp_path / "c" / "compressed" / "segments.json").unlink()
    old = decompress(tmp_path / "c" / "compressed", tmp_path / "old.zarr")
    new = open_cube(tmp_path / "c" / "decoded.zarr")
    np.testing.assert_array_equal(old["data"].values, new["data"].values)
    np.testing.assert_array_equal(old["valid"].values, new["valid"].values)


def test_nan_mask_is_coded_against_valid_and_old_stores_still_decode(cube: Path, tmp_path: Path) -> None:
    """Bands that go missing with ``valid`` cost next to nothing; a store from before the masks'
    present coding (no ``compress_mask_coding``: both masks coded row by row) decodes as before."""
    import zarr

    from fusion_models.entropy import encode_mask_rows

    m = compress_cube(cube, tmp_path / "c", patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=1)
    parts = m.stats["bits_per_entry_parts"]
    assert parts["finite_mask"] * T * B * H * W <= 4 * 32  # a few rANS words
    store = tmp_path / "c" / "compressed"
    (store / "segments.json").unlink()  # one stream per file
    pds = xr.open_zarr(tmp_path / "c" / "patches.zarr", consolidated=None)
    finite, valid = np.isfinite(pds["data"].values), pds["valid"].values
    for name, mask in (("finite", finite), ("valid", valid)):
        old_bits = encode_mask_rows(mask.reshape(-1, *mask.shape[-2:]))
        assert 8 * len(old_bits) > parts[f"{name}_mask"] * T * B * H * W  # the present coding is smaller
        (store / f"{name}.bin").write_bytes(old_bits)
    index = zarr.open_group(str(store / "index.zarr"), mode="r+")
    index.attrs.pop("compress_mask_coding")
    zarr.consolidate_metadata(str(store / "index.zarr"))
    old = decompress(store, tmp_path / "old.zarr")
    new = open_cube(tmp_path / "c" / "decoded.zarr")
    np.testing.assert_array_equal(old["data"].values, new["data"].values)
    np.testing.assert_array_equal(old["valid"].values, new["valid"].values)


@pytest.mark.slow
def test_task_publishes_rate_table_and_quicklook(cube: Path, tmp_path: Path, prefect_harness) -> None:
    """The pipeline's compress task: a rate/distortion table and the original | decoded | error
    quick-look as artifacts; the PNG is written beside the compressed store."""
    from prefect import flow
    from prefect.artifacts import Artifact

    from tasks.compress import compress_task

    @flow
    def one() -> dict:
        return compress_task(str(cube), str(tmp_path / "cz"), patch=8, ranks=[3, 2, 6, 6], step=0.05, iters=1)

    result = one()
    assert result["stats"]["bits_per_entry"] > 0 and (tmp_path / "cz" / "compress.png").stat().st_size > 0
    table = Artifact.get("compress-cube-cz")
    assert table is not None and table.type == "table" and "bits_per_entry" in str(table.data)
    image = Artifact.get("compress-png-cube-cz")
    assert image is not None and str(image.data).startswith("data:image/png;base64,")


def test_the_output_folder_must_be_the_stages_own(cube: Path, tmp_path: Path) -> None:
    """QA11: `--out .` replaced a decoded.zarr and a compress.png of the user's there. A folder
    holding anything the stage does not write is refused before any work, as is one around the cube."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "compress.png").write_text("my plot")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds notes.txt, compress.png, which the compress stage did not write"):
        compress_cube(cube, out, patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=1)
    assert (out / "compress.png").read_text() == "my plot" and sorted(p.name for p in out.iterdir()) == [
        "compress.png", "notes.txt"]
    with pytest.raises(ValueError, match="the output holds the input"):
        compress_cube(cube, cube.parent, patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=1)
    (out / "notes.txt").unlink()  # the stage's own names, but no run of the stage wrote them (QA11 recheck)
    (out / "decoded_quality.json").write_text('{"mine": 1}')
    (out / "decoded.zarr").mkdir()
    (out / "decoded.zarr" / "README.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds compress.png, decoded_quality.json, decoded.zarr"):
        compress_cube(cube, out, patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=1)
    assert sorted(p.name for p in out.iterdir()) == ["compress.png", "decoded.zarr", "decoded_quality.json"]
    (out / "compress.png").unlink()
    (out / "decoded_quality.json").unlink()
    with pytest.raises(FileExistsError, match=r"holds decoded.zarr, which"):  # refused before any work
        compress_cube(cube, out, patch=8, ranks=(3, 2, 6, 6), step=0.05, iters=1)
    assert sorted(p.name for p in out.iterdir()) == ["decoded.zarr"]

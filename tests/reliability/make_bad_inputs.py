"""Generate the bad-input corpus and run it against an existing cube.

Every case is made by code here from a good sample-area scene (no binary is committed):

    python tests/reliability/make_bad_inputs.py OUT_DIR   # writes the corpus files, lists them

:func:`run_corpus` is what ``tests/reliability/test_bad_inputs.py`` and ``benchmarks/reliability.py``
run: a cube is ingested from the good sample scenes, every scene-level bad file is dropped into
the source folder next to them, ingest runs again and each bad file must be quarantined (or
skipped) with a message naming it and the reason, while a good new scene dropped at the same time
is ingested; catalog-level and checkpoint cases must raise an error naming the file, the key and
the reason. The bytes of the store written before must not change.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml
from affine import Affine
from rasterio.crs import CRS

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "data_catalog.yaml"
SR, UDM = "_AnalyticMS_SR.tif", "_udm2.tif"


@dataclass(frozen=True)
class Case:
    """One kind of bad input: how to make it and what its message must say."""

    name: str
    level: str  # "scene" (quarantined or skipped in a run), "static", "catalog", "checkpoint"
    expect: str  # regular expression the reason must match (case-insensitive)


def _good(scenes: Path) -> tuple[Path, np.ndarray, dict[str, Any]]:
    tif = sorted((scenes / "planet").glob(f"*{SR}"))[0]
    with rasterio.open(tif) as src:
        return tif, src.read(), dict(src.profile)


def _write(path: Path, array: np.ndarray, profile: dict[str, Any], **changes: Any) -> Path:
    prof = {**profile, "count": array.shape[0], "dtype": array.dtype.name, "height": array.shape[1],
            "width": array.shape[2], **changes}
    prof = {k: v for k, v in prof.items() if v is not None or k == "nodata"}
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(array)
    return path


def _name(day: int) -> str:
    return f"PSScene_202001{day:02d}_100000_1_3B{SR}"


# -- scene-level cases: (case, make(folder, good, array, profile) -> file name) ------------------------
def _zero_byte(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    (d / _name(1)).write_bytes(b"")
    return _name(1)


def _truncated(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    blob = good.read_bytes()
    (d / _name(2)).write_bytes(blob[: len(blob) // 3])
    return _name(2)


def _garbage_tile(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    path = _write(d / _name(3), a, p, tiled=True, blockxsize=16, blockysize=16, compress="deflate",
                  interleave="pixel")
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)))
    return _name(3)


def _no_crs(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    _write(d / _name(4), a, p, crs=None, transform=None)
    return _name(4)


def _unknown_crs(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    local = CRS.from_wkt('LOCAL_CS["unreferenced local grid",UNIT["metre",1]]')
    _write(d / _name(5), a, p, crs=local)
    return _name(5)


def _band_count(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    _write(d / _name(6), a[:3], p)
    return _name(6)


def _dtype(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    _write(d / _name(7), a.astype(np.float32) * 1e-4, p, nodata=0.0)
    return _name(7)


def _all_nodata(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    _write(d / _name(8), np.zeros_like(a), p)
    return _name(8)


def _all_nan(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    _write(d / _name(9), np.full(a.shape, np.nan, np.float32), p, nodata=None)
    return _name(9)


def _inf(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    arr = a.astype(np.float32)
    arr[:, ::3, ::3] = np.inf
    _write(d / _name(10), arr, p, nodata=None)
    return _name(10)


def _out_of_range(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    _write(d / _name(11), np.full(a.shape, 30000, np.uint16), p)  # reflectance 3.0
    return _name(11)


def _no_date(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    name = f"PSScene_undated_scene_1_3B{SR}"
    shutil.copy(good, d / name)
    return name


def _impossible_date(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    name = f"PSScene_20191345_100000_1_3B{SR}"  # month 13, day 45
    shutil.copy(good, d / name)
    return name


def _outside(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    t: Affine = p["transform"]
    _write(d / _name(12), a, p, transform=Affine(t.a, 0, t.c + 500_000, 0, t.e, t.f - 2_000_000))
    return _name(12)


def _enormous(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    t: Affine = p["transform"]
    side = 200_000  # 200 000^2 px x 4 bands of uint16 declared over the cube (about 300 GiB): sparse
    prof = {**p, "width": side, "height": side, "count": 4, "dtype": "uint16", "tiled": True,
            "blockxsize": 4096, "blockysize": 4096, "compress": "deflate", "BIGTIFF": "YES", "SPARSE_OK": True,
            "transform": Affine(t.a * a.shape[2] / side, 0, t.c, 0, t.e * a.shape[1] / side, t.f)}
    with rasterio.open(d / _name(13), "w", **prof):
        pass
    return _name(13)


def _symlink_out(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    outside = d.parent.parent / "outside-the-source"
    outside.mkdir(exist_ok=True)
    target = outside / "elsewhere.tif"
    shutil.copy(good, target)
    (d / _name(14)).symlink_to(target)
    return _name(14)


def _missing_mask(d: Path, good: Path, a: np.ndarray, p: dict[str, Any]) -> str:
    _write(d / _name(15), a, p)
    (d / _name(15).replace(SR, UDM)).unlink(missing_ok=True)
    return _name(15)


SCENE_CASES: dict[str, tuple[Callable[..., str], str]] = {
    "zero-byte file": (_zero_byte, r"cannot be read|not recognized|not a supported"),
    "truncated GeoTIFF": (_truncated, r"cannot be read|read|TIFF"),
    "garbage in a tile": (_garbage_tile, r"read|decod|deflate|TIFF|IReadBlock"),
    "no CRS": (_no_crs, r"no CRS"),
    "unknown CRS": (_unknown_crs, r"CRS|transform|coordinate|project"),
    "wrong band count": (_band_count, r"band count 3, expected 4"),
    "wrong dtype": (_dtype, r"dtype"),
    "all nodata": (_all_nodata, r"nodata"),
    "all NaN": (_all_nan, r"nodata|NaN|finite"),
    "inf values": (_inf, r"inf|finite|range"),
    "out-of-range reflectance": (_out_of_range, r"outside the allowed range"),
    "unparseable date": (_no_date, r"no acquisition date"),
    "impossible date (month 13)": (_impossible_date, r"no acquisition date"),
    "scene outside the cube's bounds": (_outside, r"outside the cube's bounds"),
    "enormous declared size": (_enormous, r"read limit.*not read"),
    "symlink outside the source folder": (_symlink_out, r"symbolic link .*outside the source's folders"),
    "missing mask sidecar": (_missing_mask, r"mask file .* is missing"),
}


def make_scenes(scenes: Path) -> dict[str, str]:
    """Write every scene-level case into ``scenes/planet`` (with a UDM2 sidecar each): case -> file."""
    good, arr, prof = _good(scenes)
    folder = scenes / "planet"
    made = {}
    for case, (make, _) in SCENE_CASES.items():
        name = make(folder, good, arr, prof)
        udm = folder / name.replace(SR, UDM)
        if name.endswith(SR) and not udm.exists() and case != "missing mask sidecar":
            shutil.copy(good.with_name(good.name.replace(SR, UDM)), udm)
        made[case] = name
    return made


# -- catalog cases: mutate the repository catalog, expect CatalogError naming the key ----------------
def _raw() -> dict[str, Any]:
    return yaml.safe_load(CATALOG.read_text())


CATALOG_CASES: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "unknown catalog key": (lambda r: r["cubes"]["planet"].update(chunkz={"time": 1}),
                            r"cubes\.planet\.chunkz: unknown key \(did you mean 'chunks'\?\)"),
    "missing catalog key": (lambda r: r["sources"]["planet"].pop("bands"),
                            r"sources\.planet\.bands: required key is missing"),
    "negative resolution": (lambda r: r["cubes"]["planet"]["grid"].update(resolution=-3.0),
                            r"cubes\.planet\.grid\.resolution: resolution must be positive; got -3"),
    "zero resolution": (lambda r: r["cubes"]["planet"]["grid"].update(resolution=0),
                        r"cubes\.planet\.grid\.resolution: resolution must be positive; got 0"),
    "invalid chunk spec": (lambda r: r["cubes"]["planet"]["chunks"].update(time=0, y=7),
                           r"cubes\.planet\.chunks\.time: .*greater than or equal to 1"),
    "unknown CRS in the catalog": (lambda r: r["cubes"]["planet"]["grid"].update(crs="EPSG:999999"),
                                   r"cubes\.planet\.grid\.crs: unknown CRS 'EPSG:999999'"),
    "cube path escaping the storage root (..)": (
        lambda r: r["cubes"]["planet"].update(path="${FUSIONCUBE_DATA}/../../escaped.zarr"),
        r"cubes\.planet\.path: .* outside the storage roots"),
    "unset environment variable": (lambda r: r["storage"].update(root="${FUSIONCUBE_NO_SUCH_VAR}"),
                                   r"storage\.root: environment variable FUSIONCUBE_NO_SUCH_VAR is not set"),
}

TEXT_CASES: dict[str, tuple[str, str]] = {
    "malformed YAML": ("sources: {planet: [unclosed\ncubes: :\n", r"not valid YAML"),
    "empty catalog": ("# nothing\n", r"the catalog is empty"),
}


def _catalog_error(text: str, path: Path, env: dict[str, str]) -> str:
    from tasks.catalog import load_catalog
    from tasks.errors import CatalogError

    path.write_text(text)
    try:
        load_catalog(path, env=env)
    except CatalogError as exc:
        return str(exc)
    return "NO ERROR: the catalog was accepted"


# -- checkpoint cases -------------------------------------------------------------------------------
class _Boom:
    """Unpickling this creates a marker file: a checkpoint loader that runs it is unsafe."""

    marker = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


def _checkpoint_cases(folder: Path) -> list[dict[str, Any]]:
    import pickle

    import torch

    from tasks.checkpoint import load_state_dict
    from tasks.errors import CheckpointError

    marker = folder / "UNPICKLED"
    boom = _Boom()
    boom.marker = str(marker)
    files = {
        "checkpoint with a pickled object": (folder / "evil.pt", lambda p: p.write_bytes(pickle.dumps({"w": boom}))),
        "checkpoint that is a bare tensor": (folder / "tensor.pt", lambda p: torch.save(torch.ones(3), p)),
        "checkpoint that is a list": (folder / "list.pt", lambda p: torch.save([torch.ones(2)], p)),
    }
    out = []
    for case, (path, make) in files.items():
        make(path)
        try:
            load_state_dict(path)
            msg = "NO ERROR: the checkpoint was loaded"
        except CheckpointError as exc:
            msg = str(exc)
        ok = path.name in msg and "refused" in msg and not marker.exists()
        out.append({"case": case, "level": "checkpoint", "file": path.name, "message": msg, "clear": ok})
    return out


# -- running it all ---------------------------------------------------------------------------------
def _digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _changed(before: dict[str, str], after: dict[str, str], root: Path) -> int:
    return sum((root / k).stat().st_size if (root / k).exists() else 1 for k, v in before.items() if after.get(k) != v)


def _catalog(scenes: Path, data: Path, **env: str) -> Any:
    from tasks.catalog import load_catalog

    return load_catalog(CATALOG, env={"FUSIONCUBE_SAMPLE": str(scenes), "FUSIONCUBE_DATA": str(data), **env})


def run_corpus(sample: Path, root: Path) -> dict[str, Any]:
    """Run every case (see the module docstring). Returns the per-case rows and the summary keys
    ``bad_inputs``, ``bad_inputs_clear_error``, ``bytes_changed_in_existing_stores``."""
    from tasks.checkpoint import read_manifest
    from tasks.ingest import ingest_cube

    root.mkdir(parents=True, exist_ok=True)
    scenes, data = root / "scenes", root / "data" / "store"
    shutil.rmtree(scenes, ignore_errors=True)
    shutil.rmtree(root / "data", ignore_errors=True)
    shutil.copytree(sample, scenes)
    cat = _catalog(scenes, data)
    ingest_cube(cat, "planet", workers=1)
    cube = cat.cube_path("planet")
    before = _digest(cube)
    manifest_before = read_manifest(cube)
    assert manifest_before is not None

    made = make_scenes(scenes)
    report = ingest_cube(cat, "planet", workers=1)
    rows = {r["scene"]: r for r in report.rows() if r["status"] in ("quarantined", "skipped")}
    after = _digest(cube)
    changed = _changed(before, after, cube) + sum(1 for k in after if k not in before)
    manifest_after = read_manifest(cube)
    assert manifest_after is not None
    for key in ("scenes", "dates", "time_steps"):
        if manifest_after.outputs[key] != manifest_before.outputs[key]:
            changed += 1  # the manifest may only gain quarantine rows

    cases: list[dict[str, Any]] = []
    for case, (_, pattern) in SCENE_CASES.items():
        name = made[case]
        row = rows.get(name)
        msg = f"{name}: {row['status']}: {row['reason']}" if row else f"{name}: NOT REPORTED"
        clear = row is not None and re.search(pattern, row["reason"], re.IGNORECASE) is not None
        recorded = row is not None and (row["status"] == "skipped" or name in manifest_after.outputs["quarantine"])
        cases.append({"case": case, "level": "scene", "file": name, "message": msg, "clear": clear and recorded})

    # the rest of a run completes: a good new scene beside the bad ones is ingested
    good, arr, prof = _good(scenes)
    new = scenes / "planet" / _name(20)
    _write(new, arr, prof)
    shutil.copy(good.with_name(good.name.replace(SR, UDM)), new.with_name(new.name.replace(SR, UDM)))
    more = ingest_cube(cat, "planet", workers=1)
    appended = _digest(cube)
    old_chunks = {k: v for k, v in before.items() if k.startswith(("data/c/", "valid/c/", "landcover/c"))}
    changed += _changed(old_chunks, appended, cube)
    good_ingested = [r["scene"] for r in more.ingested] == [new.name] and not more.quarantined

    # static layer: an NLCD file with codes outside the class domain, at the creation of a new cube
    clean = root / "scenes-static"
    shutil.rmtree(clean, ignore_errors=True)
    shutil.copytree(sample, clean)
    with rasterio.open(next((clean / "nlcd").glob("*.tif"))) as src:
        codes, nprof = src.read(), dict(src.profile)
    codes[:, ::2, ::2] = 77  # not an NLCD class
    _write(clean / "nlcd" / "nlcd_bad_codes.tif", codes, nprof)
    fresh = _catalog(clean, root / "data" / "fresh")
    static_report = ingest_cube(fresh, "planet", workers=1)
    srow = next((q for q in static_report.quarantined if q["scene"] == "nlcd_bad_codes.tif"), None)
    cases.append({"case": "NLCD codes outside the class domain", "level": "static", "file": "nlcd_bad_codes.tif",
                  "message": f"nlcd_bad_codes.tif: {srow['reason']}" if srow else "NOT REPORTED",
                  "clear": srow is not None and re.search(r"class|code|domain|77", srow["reason"], re.I) is not None})

    # catalog cases
    cat_dir = root / "catalogs"
    cat_dir.mkdir(exist_ok=True)
    env = {"FUSIONCUBE_SAMPLE": str(scenes), "FUSIONCUBE_DATA": str(root / "data" / "cat")}
    for case, (mutate, pattern) in CATALOG_CASES.items():
        raw = _raw()
        mutate(raw)
        path = cat_dir / f"{re.sub(r'[^a-z]+', '_', case.lower())}.yaml"
        msg = _catalog_error(yaml.safe_dump(raw, sort_keys=False), path, env)
        cases.append({"case": case, "level": "catalog", "file": path.name, "message": msg,
                      "clear": path.name in msg and re.search(pattern, msg) is not None})
    for case, (text, pattern) in TEXT_CASES.items():
        path = cat_dir / f"{re.sub(r'[^a-z]+', '_', case.lower())}.yaml"
        msg = _catalog_error(text, path, env)
        cases.append({"case": case, "level": "catalog", "file": path.name, "message": msg,
                      "clear": path.name in msg and re.search(pattern, msg) is not None})
    nothing_written = not (root / "data" / "cat").exists()

    cases += _checkpoint_cases(root)
    return {
        "cases": cases,
        "bad_inputs": len(cases),
        "bad_inputs_clear_error": sum(bool(c["clear"]) for c in cases),
        "bytes_changed_in_existing_stores": changed,
        "good_scene_ingested_beside_bad_ones": good_ingested,
        "catalog_errors_wrote_nothing": nothing_written,
    }


def main(argv: list[str]) -> int:
    """Write the scene-level corpus under ``argv[0]`` (a copy of the small sample area + the bad files)."""
    from tasks.sample_area import generate_sample_area

    if len(argv) != 1:
        sys.stderr.write("usage: python tests/reliability/make_bad_inputs.py OUT_DIR\n")
        return 2
    out = Path(argv[0])
    generate_sample_area(out, size="small", seed=3)
    for case, name in make_scenes(out).items():
        sys.stdout.write(f"{case}: {out / 'planet' / name}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

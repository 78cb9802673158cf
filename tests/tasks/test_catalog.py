from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tasks.catalog import NLCD_CLASSES, catalog_from_dict, load_catalog
from tasks.errors import CatalogError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load((REPO / "data_catalog.yaml").read_text())


def test_repository_catalog_loads_and_resolves_paths(tmp_path: Path) -> None:
    cat = load_catalog(REPO / "data_catalog.yaml", env={"FUSIONCUBE_DATA": str(tmp_path)})
    assert set(cat.cubes) == {"planet", "modis_lst"}
    assert cat.cube_path("planet") == tmp_path / "cubes" / "planet.zarr"
    assert cat.sources["planet"].bands[3].name == "nir"
    assert cat.sources["planet"].bands[3].scale == pytest.approx(1e-4)  # YAML merge keys work
    assert cat.sources["nlcd"].classes == NLCD_CLASSES
    assert cat.sources["nlcd"].resampling == "nearest"
    assert cat.sources["planet"].resampling is None  # bilinear, or the area average onto coarser grids


def test_relative_paths_resolve_against_the_catalog_file(tmp_path: Path, raw: dict) -> None:
    raw["storage"] = {"root": "data"}
    cat = catalog_from_dict(raw, path=tmp_path / "sub" / "cat.yaml")
    assert cat.root == tmp_path / "sub" / "data"


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r["sources"]["planet"].update(globb="x"), r"sources\.planet\.globb: unknown key \(did you mean 'glob'\?\)"),
        (lambda r: r["cubes"]["planet"].update(sources=["plnet"]), r"unknown source 'plnet' \(did you mean 'planet'\?\)"),
        (lambda r: r["cubes"]["planet"]["grid"].update(resolution=0), r"cubes\.planet\.grid\.resolution: resolution must be positive"),
        (lambda r: r["cubes"]["planet"]["grid"].update(resolution=-3), r"cubes\.planet\.grid\.resolution"),
        (lambda r: r["cubes"]["planet"]["chunks"].update(y=0), r"cubes\.planet\.chunks\.y"),
        (lambda r: r["cubes"]["planet"]["grid"].update(crs="EPSG:999999"), r"cubes\.planet\.grid\.crs: unknown CRS"),
        (lambda r: r["sources"]["planet"].pop("bands"), r"sources\.planet\.bands: required key is missing"),
        (lambda r: r.update(stagez={}), r"stagez: unknown key \(did you mean 'stages'\?\)"),
        (lambda r: r["stages"]["patch"].update(sise=3), r"stages\.patch\.sise: unknown key \(did you mean 'size'\?\)"),
        (lambda r: r["stages"]["patch"].update(fractions=[0.5, 0.5, 0.5]), r"fractions"),
        (lambda r: r["sources"]["planet"]["bands"][0].update(scale="abc"), r"bands\[0\]\.scale"),
        (lambda r: r["sources"]["nlcd"].update(resampling="bilinear"), r"categorical sources need nearest or mode"),
        (lambda r: r["cubes"]["planet"]["grid"].update(bounds=[10, 0, 0, 10]), r"bounds must be"),
        (lambda r: r["cubes"]["planet"].update(params={"anomalys": {}}),
         r"cubes\.planet\.params\.anomalys: unknown key \(did you mean 'anomalies'\?\)"),
        (lambda r: r["cubes"]["planet"].update(params={"anomalies": {"bitz": 6}}),
         r"cubes\.planet\.params\.anomalies\.bitz: unknown key \(did you mean 'bits'\?\)"),
        (lambda r: r["cubes"]["planet"].update(params={"compress": {"step": 0.5, "psnr": 40}}),
         r"cubes\.planet\.params\.compress: give at most one of step, bits and psnr"),
        (lambda r: r["stages"]["compress"].update(psnr=40), r"stages\.compress: give at most one of step, bits and psnr"),
    ],
)
def test_malformed_catalog_names_file_and_key(raw: dict, mutate, match: str) -> None:
    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(CatalogError, match=match) as info:
        catalog_from_dict(bad, path="my_catalog.yaml")
    assert "my_catalog.yaml" in str(info.value)


def test_unreadable_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("sources: [unclosed\n")
    with pytest.raises(CatalogError, match="c.yaml: not valid YAML"):
        load_catalog(bad)
    with pytest.raises(CatalogError, match="catalog file not found"):
        load_catalog(tmp_path / "nope.yaml")
    empty = tmp_path / "e.yaml"
    empty.write_text("")
    with pytest.raises(CatalogError, match="empty"):
        load_catalog(empty)


def test_environment_variables(tmp_path: Path, raw: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    raw["storage"] = {"root": "${MY_ROOT}"}
    monkeypatch.delenv("MY_ROOT", raising=False)
    with pytest.raises(CatalogError, match="storage.root: environment variable MY_ROOT is not set"):
        catalog_from_dict(raw, path=tmp_path / "c.yaml")
    monkeypatch.setenv("MY_ROOT", str(tmp_path / "x"))
    assert catalog_from_dict(raw, path=tmp_path / "c.yaml").root == tmp_path / "x"


def test_lookup_errors_suggest(raw: dict) -> None:
    cat = catalog_from_dict(raw, path="c.yaml")
    with pytest.raises(CatalogError, match="did you mean 'planet'"):
        cat.cube("plant")
    with pytest.raises(CatalogError, match="did you mean 'nlcd'"):
        cat.source("nlc")


def test_a_cube_s_own_stage_parameters_replace_the_shared_ones_key_by_key(tmp_path: Path, raw: dict) -> None:
    raw["cubes"]["modis_lst"]["params"] = {
        "anomalies": {"bits": 6},
        "compress": {"psnr": 40},  # one choice with stages.compress.step: replaces it
        "labels": {"labels": "fields/points.csv", "lam": 0},
        "gapfill": {"batch": 2},  # QA9: long series need fewer patches a step; the CLI had it, the catalog not
    }
    raw["storage"] = {"root": "data"}
    cat = catalog_from_dict(raw, path=tmp_path / "cat.yaml")
    shared = cat.stage_params("planet", "anomalies")
    assert shared == raw["stages"]["anomalies"] | {"band": None, "lam": None}
    assert cat.stage_params("modis_lst", "anomalies") == shared | {"bits": 6}
    assert cat.stage_params("planet", "compress")["step"] == 0.5
    own = cat.stage_params("modis_lst", "compress")
    assert (own["step"], own["bits"], own["psnr"], own["iters"]) == (None, None, 40.0, 10)
    labels = cat.stage_params("modis_lst", "labels")
    assert labels["labels"] == str(tmp_path / "fields" / "points.csv")  # beside the catalog
    assert (labels["lam"], labels["epochs"]) == (0.0, raw["stages"]["labels"]["epochs"])
    assert cat.stage_params("planet", "labels")["labels"] == "landcover"  # a layer name stays a name
    assert (cat.stage_params("modis_lst", "gapfill")["batch"], cat.stage_params("planet", "gapfill")["batch"]) == (2, 8)
    with pytest.raises(CatalogError, match=r"no stage 'anomaly' \(did you mean 'anomalies'\?\)"):
        cat.stage_params("planet", "anomaly")


def test_catalog_check_lists_each_cube_with_its_stages_and_own_parameters(tmp_path: Path, raw: dict, capsys) -> None:
    from flows.cli import main

    raw["cubes"]["modis_lst"]["params"] = {"anomalies": {"bits": 6}}
    (tmp_path / "scenes").mkdir()
    for i in range(2):
        (tmp_path / "scenes" / f"PSScene_2019070{i}_AnalyticMS_SR.tif").write_bytes(b"")
    raw["sources"]["planet"]["glob"] = "scenes/*_AnalyticMS_SR.tif"
    raw["sources"]["modis_lst"]["glob"] = "nomodis/*.tif"  # a glob matching nothing: the commonest slip
    path = tmp_path / "cat.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["catalog", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "source planet: 2 file(s) match" in out
    assert f"WARNING source modis_lst: no file matches {tmp_path / 'nomodis' / '*.tif'}" in out
    assert "cube planet -> " in out and "stages: gapfill\n" in out
    assert "stages: anomalies; own parameters: anomalies.bits=6" in out
    assert "(not made yet)" in out
    assert main(["info", str(path)]) == 0 and capsys.readouterr().out == out  # info on a catalog: the same

    # stages that cannot run as set up are said before any run: a labels file that is not there,
    # a label layer neither the cube nor its static sources give (planet's static landcover is fine)
    raw["cubes"]["planet"]["stages"] = ["gapfill", "labels", "classify"]
    raw["cubes"]["planet"]["params"] = {"labels": {"labels": "nofile.csv"}}
    raw["cubes"]["modis_lst"]["stages"] = ["anomalies", "classify"]
    path.write_text(yaml.safe_dump(raw))
    assert main(["catalog", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert (f"WARNING cube planet: stage labels cannot run: {path}: cubes.planet.params.labels.labels: "
            f"no such file {tmp_path / 'nofile.csv'}") in out
    assert "stage classify cannot run" in out and "cube planet: stage classify" not in out
    assert (f"WARNING cube modis_lst: stage classify cannot run: {path}: stages.classify.label: cube modis_lst "
            "has no (y, x) layer 'landcover' to learn from (its layers: none)") in out
    raw["cubes"]["modis_lst"]["params"] = {"anomalies": {"bitz": 6}}
    path.write_text(yaml.safe_dump(raw))
    assert main(["catalog", "check", str(path)]) != 0
    assert "cubes.modis_lst.params.anomalies.bitz: unknown key" in capsys.readouterr().err


def test_a_cube_s_own_patching_replaces_the_shared_keys_it_gives(raw: dict) -> None:
    raw["stages"]["patch"].update(block=8, seed=3)
    raw["cubes"]["modis_lst"]["patch"] = {"size": 16}
    cat = catalog_from_dict(raw, path="cat.yaml")
    assert cat.patch_params("modis_lst").model_dump() == {**raw["stages"]["patch"], "size": 16, "stride": None,
                                                          "fractions": tuple(raw["stages"]["patch"]["fractions"])}
    assert cat.patch_params("planet") == cat.stages.patch


def test_a_cube_path_that_is_not_the_one_its_products_came_from_is_refused(tmp_path: Path, raw: dict) -> None:
    """A typo in cubes.<cube>.path (QA round 6) built a second cube from the whole archive and
    replaced the real cube's products in artifacts/<cube>/ with its own, and back on the next run
    of the right catalog. Products made from another store that still exists stop the run."""
    from flows.cli import main
    from tasks.checkpoint import Manifest, write_manifest
    from tasks.info import describe_catalog

    raw["storage"] = {"root": str(tmp_path)}
    real = tmp_path / "cubes" / "planet.zarr"
    real.mkdir(parents=True)
    (tmp_path / "artifacts" / "planet").mkdir(parents=True)
    write_manifest(tmp_path / "artifacts" / "planet" / "patches.zarr",
                   Manifest(stage="patch", key="k", params={}, inputs={}, code_version="1",
                            outputs={"cube": str(real)}))
    assert catalog_from_dict(raw, path=tmp_path / "cat.yaml").stage_dir_problem("planet") is None  # its own
    raw["cubes"]["planet"]["path"] = str(tmp_path / "cubes" / "plnet.zarr")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(raw))
    problem = catalog_from_dict(raw, path=tmp_path / "typo.yaml").stage_dir_problem("planet")
    assert problem is not None and "were made from the cube" in problem and "build a second cube" in problem
    assert main(["run", "planet", "--catalog", str(tmp_path / "typo.yaml")]) == 2  # before Prefect starts
    assert not (tmp_path / "cubes" / "plnet.zarr").exists()
    assert any("a run is refused" in line for line in describe_catalog(tmp_path / "typo.yaml"))
    real.rename(tmp_path / "cubes" / "moved.zarr")  # the old store is gone: a moved cube, not refused
    assert catalog_from_dict(raw, path=tmp_path / "typo.yaml").stage_dir_problem("planet") is None


def test_a_run_names_the_sources_of_its_cube_that_match_no_file(tmp_path: Path, capsys) -> None:
    """A static layer's path with a typo (QA round 6) read as "nothing new"; `fusioncube run` now
    says which of the cube's sources match no file before it runs."""
    from flows.cli import _warn_unmatched_sources

    cat = load_catalog(REPO / "data_catalog.yaml", env={"FUSIONCUBE_DATA": str(tmp_path),
                                                         "FUSIONCUBE_SAMPLE": str(tmp_path / "nowhere")})
    _warn_unmatched_sources(cat, "planet")
    err = capsys.readouterr().err
    assert "warning: source planet of cube planet: no file matches" in err
    assert "warning: source nlcd of cube planet" in err  # its static land cover layer

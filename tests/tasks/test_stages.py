"""The stage table: every stage takes its catalog parameters, the summary says what ran."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.catalog import load_catalog
from tasks.pipeline_report import pipeline_summary
from tasks.stages import STAGES

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_task_accepts_its_catalog_parameters(name: str) -> None:
    catalog = load_catalog(REPO / "data_catalog.yaml")
    signature = inspect.signature(STAGES[name].task.fn)
    signature.bind("cube.zarr", "out", **catalog.stage_params("planet", name), overwrite=True)


def test_every_stage_a_cube_enables_is_in_the_table() -> None:
    catalog = load_catalog(REPO / "data_catalog.yaml")
    for cube, spec in catalog.cubes.items():
        assert set(spec.stages) <= set(STAGES), cube


def test_every_list_that_names_the_stages_names_the_same_ones() -> None:
    """QA9: a stage is named in five places; one left out failed late (a stage missing from
    CubeStageParams was reported as "data_catalog.yaml: no stage ...", blaming a sound catalog)."""
    from typing import get_args

    from flows.cli import STAGE_COMMANDS, STAGE_MODULES
    from tasks.catalog import CubeStageParams, StageName, Stages

    names = set(STAGES)
    assert set(get_args(StageName)) == names
    assert set(CubeStageParams.model_fields) == names
    assert set(Stages.model_fields) == names | {"patch"}
    assert names <= set(STAGE_COMMANDS)
    assert {STAGE_COMMANDS[n] for n in names} == set(STAGE_MODULES)
    for name in names:  # each command's module is the stage's own
        assert STAGES[name].task.fn.__module__ == STAGE_COMMANDS[name], name


def _products(created: datetime, *, new: int, timespec: str = "seconds") -> dict:
    ingest = {"ingested": [{"scene": f"s{i}"} for i in range(new)], "dates_added": ["2019-07-01"] * bool(new),
              "skipped": [], "quarantined": [{"scene": "bad.tif", "reason": "no CRS"}], "time_steps": 5,
              "quicklook": None}
    stage = {"created": created.isoformat(timespec=timespec), "stats": {"flagged": 3, "rmse": 0.25},
             "artifact": "/tmp/x/anomalies.zarr"}
    return {"cube": "planet", "path": "/tmp/x/planet.zarr", "ingest": ingest,
            "stages": {"patch": dict(stage), "anomalies": dict(stage)}}


def test_summary_tells_reused_from_ran_and_lists_warnings() -> None:
    started = datetime.now(UTC)
    empty = _products(started, new=0)
    empty["ingest"]["time_steps"], empty["stages"] = 0, {}
    assert "no cube written: no scene was taken (0 skipped, 1 quarantined)" in pipeline_summary(empty, started)["headline"]
    old = pipeline_summary(_products(started - timedelta(hours=1), new=0), started)
    assert old["stages"] == {"patch": "reused", "anomalies": "reused"}
    assert "nothing new" in old["headline"]
    assert "quarantined `bad.tif`: no CRS" in old["markdown"]
    fresh = pipeline_summary(_products(started + timedelta(seconds=3), new=2), started)
    assert fresh["stages"] == {"patch": "ran", "anomalies": "ran"}
    assert "2 new scene(s)" in fresh["headline"] and "3 entries flagged" in fresh["markdown"]
    # a re-run that starts within the second the last manifest was written (the demo's re-run did,
    # now and then, and called its reused stages "ran")
    second = datetime(2026, 1, 1, 12, 0, 5, 600_000, tzinfo=UTC)
    same = pipeline_summary(_products(second - timedelta(milliseconds=300), new=0, timespec="microseconds"), second)
    assert same["stages"] == {"patch": "reused", "anomalies": "reused"}
    later = pipeline_summary(_products(second + timedelta(milliseconds=10), new=0, timespec="microseconds"), second)
    assert later["stages"] == {"patch": "ran", "anomalies": "ran"}
    failed = _products(started, new=0)
    failed["stages"]["anomalies"] = {"error": "boom"}
    assert pipeline_summary(failed, started)["stages"]["anomalies"] == "FAILED"
    waiting = _products(started, new=1)
    waiting["stages"]["anomalies"] = {"artifact": None, "waiting": "needs at least 3 dates; the cube has 2"}
    summary = pipeline_summary(waiting, started)
    assert summary["stages"]["anomalies"] == "waiting for data"
    assert "stage anomalies waits for data: needs at least 3 dates" in summary["markdown"]


def test_anomalies_task_waits_on_a_young_cube(tmp_path) -> None:
    """A two-date cube: the anomaly task reports that it waits for data instead of failing the run."""
    import numpy as np
    import xarray as xr
    from prefect.logging import disable_run_logger

    from tasks.anomalies import anomalies_task

    cube = tmp_path / "young.zarr"
    xr.Dataset({"data": (("time", "band", "y", "x"), np.ones((2, 1, 4, 4), np.float32)),
                "valid": (("time", "y", "x"), np.ones((2, 4, 4), bool))},
               coords={"time": np.array(["2019-07-01", "2019-07-02"], dtype="datetime64[ns]"),
                       "band": ["lst"], "y": np.arange(4.0), "x": np.arange(4.0)}).to_zarr(cube, zarr_format=3)
    with disable_run_logger():
        result = anomalies_task.fn(str(cube), str(tmp_path / "a.zarr"))
    assert result["artifact"] is None and "at least 3 dates" in result["waiting"]


def test_an_unknown_stage_is_refused_with_a_suggestion_before_any_work(tmp_path: Path) -> None:
    from flows.pipeline import pipeline_steps

    with pytest.raises(ValueError, match=r"stages \['anomaly'\] are not pipeline stages \(did you mean 'anomalies'\?\)"):
        pipeline_steps(str(REPO / "data_catalog.yaml"), "planet", stages=["anomaly"],
                       env={"FUSIONCUBE_DATA": str(tmp_path)})
    assert not any(tmp_path.iterdir())


def test_a_stage_s_logged_warnings_reach_the_run_summary(tmp_path: Path) -> None:
    """Patching a cube smaller than the patch size logs that the size was cut: the task's result
    carries the warning, and the operator's summary lists it with the stage's name."""
    import numpy as np
    import xarray as xr
    from prefect.logging import disable_run_logger

    from tasks.patch import patch_task

    cube = tmp_path / "small.zarr"
    rng = np.random.default_rng(0)
    xr.Dataset({"data": (("time", "band", "y", "x"), rng.random((3, 1, 12, 10), dtype=np.float32)),
                "valid": (("time", "y", "x"), np.ones((3, 12, 10), bool))},
               coords={"time": np.array(["2019-07-01", "2019-07-02", "2019-07-03"], dtype="datetime64[ns]"),
                       "band": ["b"], "y": np.arange(12.0), "x": np.arange(10.0)}).to_zarr(cube, zarr_format=3)
    with disable_run_logger():
        result = patch_task.fn(str(cube), str(tmp_path / "p.zarr"), size=32, block=1)
    assert any("patches of 10 px instead of 32" in w for w in result["warnings"]), result.get("warnings")
    started = datetime.now(UTC)
    products = _products(started, new=1)
    products["stages"]["patch"] = result
    summary = pipeline_summary(products, started)
    assert any(w.startswith("stage patch: ") and "patches of 10 px instead of 32" in w for w in summary["warnings"])
    assert "- stage patch: " in summary["markdown"]
    for name, stage in STAGES.items():  # every stage reports its warnings the same way
        assert hasattr(stage.task.fn, "__wrapped__"), name


def test_captured_warnings_keep_this_thread_s_distinct_warnings_only() -> None:
    import logging
    import threading

    from tasks.runlog import captured_warnings

    log = logging.getLogger("tasks.somewhere")
    with captured_warnings() as found:
        log.warning("cut to %d px", 10)
        log.warning("cut to %d px", 10)  # said twice, kept once
        log.info("not a warning")
        logging.getLogger("elsewhere").warning("not the project's")
        other = threading.Thread(target=lambda: log.warning("another task's"))
        other.start()
        other.join()
    log.warning("after")
    assert found == ["cut to 10 px"]


def test_compress_is_current_only_for_the_patch_size_and_ranks_asked_for(tmp_path: Path) -> None:
    """The no-op check (`fusioncube run` answered from the manifests) took a compressed store cut
    into other patches, or coded with ranks no longer asked for, as current."""
    import numpy as np
    import xarray as xr
    import yaml

    from tasks.catalog import catalog_from_dict
    from tasks.compress import compress_cube
    from tasks.stages import stage_current

    raw = yaml.safe_load((REPO / "data_catalog.yaml").read_text())
    raw["cubes"]["planet"]["params"] = {"compress": {"patch": 8, "iters": 2}}
    env = {"FUSIONCUBE_DATA": str(tmp_path)}
    catalog = catalog_from_dict(raw, path=REPO / "data_catalog.yaml", env=env)
    cube = catalog.cube_path("planet")
    rng = np.random.default_rng(0)
    xr.Dataset({"data": (("time", "band", "y", "x"), rng.random((4, 2, 16, 16), dtype=np.float32)),
                "valid": (("time", "y", "x"), np.ones((4, 16, 16), bool))},
               coords={"time": np.arange("2019-07-01", "2019-07-05", dtype="datetime64[D]").astype("datetime64[ns]"),
                       "band": ["a", "b"], "y": np.arange(16.0), "x": np.arange(16.0)}).to_zarr(cube, zarr_format=3)
    params = catalog.stage_params("planet", "compress")
    compress_cube(cube, catalog.stage_dir("planet") / "compress", **{**params, "ranks": None})
    assert stage_current(catalog, "planet", "compress") is not None
    for own in ({"patch": 4, "iters": 2}, {"patch": 8, "iters": 2, "ranks": [2, 2, 3, 3]},
                {"patch": 8, "iters": 3}):
        raw["cubes"]["planet"]["params"] = {"compress": own}
        assert stage_current(catalog_from_dict(raw, path=REPO / "data_catalog.yaml", env=env), "planet",
                             "compress") is None, own


def test_a_full_disk_is_reported_naming_the_output_and_its_free_space(tmp_path: Path) -> None:
    """Zarr's "[Errno 28] No space left on device" names no path: the stage's error names its
    output, the space left there and what is kept."""
    import errno

    import pytest

    from tasks.runlog import reports_warnings

    @reports_warnings
    def stage(cube: str, out: str) -> dict:
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "artifacts" / "c" / "filled.zarr"  # not made yet: its nearest folder is measured
    with pytest.raises(OSError, match=rf"no space left on the device holding {out} \(\d+\.\d MB free there\); "
                                      "free space and run again: finished products are kept") as info:
        stage("c.zarr", str(out))
    assert info.value.errno == errno.ENOSPC and "resume" not in str(info.value)
    work = out.parent / f"{out.name}.resume-0123"  # an anomaly run's kept work: named, with its size
    work.mkdir(parents=True)
    (work / "chunk").write_bytes(b"0" * 2_000_000)
    with pytest.raises(OSError, match=rf"kept in {work} \(the next run goes on from it; delete it to free 2.0 MB"):
        stage("c.zarr", str(out))

    @reports_warnings
    def other(cube: str, out: str) -> dict:
        raise PermissionError(errno.EACCES, "Permission denied", out)

    with pytest.raises(PermissionError, match="Permission denied"):  # other OS errors as they were
        other("c.zarr", str(out))


@pytest.mark.parametrize("stage", ["anomalies", "gapfill", "classify", "compress", "labels"])
def test_a_missing_cube_is_named_in_plain_words_and_nothing_is_written(stage: str, tmp_path: Path) -> None:
    """QA9: three stages said "input artifact does not exist", checkpoint jargon, for a typo."""
    from tasks.anomalies import detect_anomalies
    from tasks.classify import classify_cube
    from tasks.compress import compress_cube
    from tasks.gapfill import gapfill_cube
    from tasks.labels import recover_labels

    cube, out = tmp_path / "typo.zarr", tmp_path / "out.zarr"
    run = {"anomalies": lambda: detect_anomalies(cube, out), "gapfill": lambda: gapfill_cube(cube, out),
           "classify": lambda: classify_cube(cube, out), "compress": lambda: compress_cube(cube, out),
           "labels": lambda: recover_labels(cube, "landcover", out)}[stage]
    with pytest.raises(FileNotFoundError, match=r"typo\.zarr: no such (cube|file or folder)$"):
        run()
    assert list(tmp_path.iterdir()) == []

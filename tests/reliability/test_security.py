"""Security defaults: local-only services, outputs inside the storage roots, weights-only model
loading, no secrets or environment in logs and artifacts."""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.reliability import CATALOG, REPO
from tasks.catalog import catalog_from_dict, load_catalog
from tasks.errors import CatalogError, CheckpointError


def test_services_bind_to_localhost_unless_configured() -> None:
    from flows import serve

    parser = argparse.ArgumentParser()
    serve.add_cli(parser.add_subparsers())
    assert parser.parse_args(["serve"]).host == "127.0.0.1"
    assert inspect.signature(serve.start_local_server).parameters["host"].default == "127.0.0.1"
    from flows.pipeline import dask_task_runner

    runner = dask_task_runner(None, workers=1)
    assert "host" not in runner.cluster_kwargs  # distributed's LocalCluster default: 127.0.0.1
    assert runner.cluster_kwargs["dashboard_address"] is None  # no dashboard port at all


def _raw(tmp_path: Path) -> dict:
    raw = yaml.safe_load(CATALOG.read_text())
    raw["storage"] = {"root": str(tmp_path / "data")}
    return raw


def test_no_catalog_output_path_escapes_the_storage_roots(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["cubes"]["planet"]["path"] = str(tmp_path / "data" / ".." / "elsewhere.zarr")
    with pytest.raises(CatalogError, match=r"cubes\.planet\.path: .*outside the storage roots"):
        catalog_from_dict(raw, path=tmp_path / "c.yaml")
    (tmp_path / "data").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "data" / "link").symlink_to(tmp_path / "outside")
    raw["cubes"]["planet"]["path"] = "data/link/planet.zarr"  # a link out of the root
    with pytest.raises(CatalogError, match="resolves to .*outside"):
        catalog_from_dict(raw, path=tmp_path / "c.yaml")
    raw = _raw(tmp_path)
    raw["cubes"]["../../escape"] = raw["cubes"].pop("modis_lst")  # a cube name is a folder name
    with pytest.raises(CatalogError, match="outside the storage roots"):
        catalog_from_dict(raw, path=tmp_path / "c.yaml")
    raw = _raw(tmp_path)
    raw["cubes"]["planet"]["path"] = "data/cubes/inside.zarr"
    assert catalog_from_dict(raw, path=tmp_path / "c.yaml").cube_path("planet") == tmp_path / "data/cubes/inside.zarr"


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling runs this: a loader that unpickles is unsafe
        return (Path.touch, (self.marker,))


def test_model_files_load_weights_only_and_must_be_state_dicts(tmp_path: Path) -> None:
    from tasks.checkpoint import load_state_dict
    from tasks.gapfill import load_model, weights_path

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"layer.weight": _Payload(marker)}))
    with pytest.raises(CheckpointError, match=r"evil\.pt: not a plain state dict .*refused, not unpickled"):
        load_state_dict(evil)
    # the stage's own loader, on a finished-looking artifact whose weights were swapped
    out = tmp_path / "filled.zarr"
    out.mkdir()
    (tmp_path / "filled.zarr.manifest.json").write_text(
        '{"stage": "gapfill", "key": "k", "params": {"layers": 2}, "inputs": {}, "code_version": "x",'
        ' "outputs": {"sample_shape": [4, 2, 8, 8], "ranks": [2, 2, 8, 8]}}')
    shutil.copy(evil, weights_path(out))
    with pytest.raises(CheckpointError, match=r"filled\.zarr\.lrtcnet\.pt: not a plain state dict") as refused:
        load_model(out)
    assert "weights_only` set to `False`" not in str(refused.value)  # torch's advice: never taken here
    assert not marker.exists(), "a model loader unpickled arbitrary code"
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert set(load_state_dict(tmp_path / "ok.pt")) == {"w"}
    # every torch.load in the code base passes weights_only=True
    for py in [*REPO.glob("tasks/*.py"), *REPO.glob("flows/*.py"), *REPO.glob("fusion_models/*.py")]:
        for call in re.findall(r"torch\.load\((.*?)\)\s*$", py.read_text(), flags=re.M):
            assert "weights_only=True" in call, f"{py.name}: torch.load({call})"


def test_no_secret_or_environment_in_logs_or_artifacts(
    small_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tasks.ingest import ingest_cube
    from tasks.patch import make_patches

    secret = "s3cr3t-token-8d1f0c9e"
    monkeypatch.setenv("FUSIONCUBE_TEST_API_TOKEN", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret + "-aws")
    scenes = tmp_path / "scenes"
    shutil.copytree(small_sample, scenes)
    (scenes / "planet" / "PSScene_20200101_000000_1_3B_AnalyticMS_SR.tif").write_bytes(b"")  # a quarantine row
    data = tmp_path / "data"
    cat = load_catalog(CATALOG, env={"FUSIONCUBE_SAMPLE": str(scenes), "FUSIONCUBE_DATA": str(data)})
    with caplog.at_level(logging.DEBUG):
        report = ingest_cube(cat, "modis_lst", workers=1)
        make_patches(cat.cube_path("modis_lst"), cat.stage_dir("modis_lst") / "patches.zarr",
                     **cat.patch_params("modis_lst").model_dump())
    assert report.time_steps > 0
    needles = {secret, "AWS_SECRET_ACCESS_KEY", "FUSIONCUBE_TEST_API_TOKEN"}
    needles |= {v for k, v in os.environ.items() if k in ("PATH", "HOME") and len(v) > 6}
    texts = {"log": caplog.text + repr(report.to_dict())}
    for f in data.rglob("*"):
        if f.is_file():
            texts[str(f)] = f.read_bytes().decode("latin-1")
    leaks = [(where, n) for where, text in texts.items() for n in needles if n in text]
    assert not leaks, leaks

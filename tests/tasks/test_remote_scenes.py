"""Scenes read over HTTP (COGs in object stores, data portals): GDAL's /vsicurl/ behind a URL,
served here by a local range-capable server on 127.0.0.1 (tests/tasks/range_server.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.transform import from_origin

from tasks.discover import file_name, file_stamp, is_remote, sibling


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A range-capable static server in its own process: rasterio holds the GIL while GDAL
    fetches, so a server thread in this process would never answer."""
    root = tmp_path / "www"
    root.mkdir()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("range_server.py")), str(root)],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield root, f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def test_remote_path_helpers() -> None:
    assert is_remote("https://host/a/b.tif") and is_remote("s3://bucket/k.tif") and is_remote("/vsis3/b/k.tif")
    assert not is_remote("/data/a.tif") and not is_remote("scenes/a.tif")
    assert file_name("https://host/a/S2_20200101_B04.tif?token=x") == "S2_20200101_B04.tif"
    assert sibling("https://host/a/x_SR.tif", "x_udm2.tif") == "https://host/a/x_udm2.tif"
    assert sibling("/data/a/x_SR.tif", "x_udm2.tif") == "/data/a/x_udm2.tif"
    assert file_stamp("s3://bucket/never-fetched.tif") == {"size": -1, "mtime_ns": 0}


@pytest.mark.parametrize(("path", "secrets", "shown"), [
    ("http://alice:PW@h/s.tif", ["userinfo"], "http://***@h/s.tif"),
    ("http://TOKEN@h/s.tif", ["userinfo"], "http://***@h/s.tif"),
    ("/vsicurl/http://alice:PW@h/s.tif", ["userinfo"], "/vsicurl/http://***@h/s.tif"),
    ("/vsizip//vsicurl/https://u:p@h/a.zip/x.tif", ["userinfo"], "/vsizip//vsicurl/https://***@h/a.zip/x.tif"),
    ("/vsicurl/https://h/s.tif?X-AMZ-SIGNATURE=S&X-Amz-Date=1", ["X-AMZ-SIGNATURE"],
     "/vsicurl/https://h/s.tif?X-AMZ-SIGNATURE=***&X-Amz-Date=1"),
    ("/vsicurl?url=http%3A%2F%2Fh%2Fs.tif%3Fsig%3DABC&use_head=no", ["sig"],
     "/vsicurl?url=http://h/s.tif%3Fsig%3D***&use_head=no"),
    ("https://h/a.tif?auth=Z&password=P&v=2", ["auth", "password"], "https://h/a.tif?auth=***&password=***&v=2"),
    ("https://h/a.tif", [], "https://h/a.tif"), ("s3://bucket/k.tif", [], "s3://bucket/k.tif"),
    ("/data/a.tif", [], "/data/a.tif"),
])
def test_credentials_are_found_in_urls_and_gdal_paths(path: str, secrets: list[str], shown: str) -> None:
    from tasks.discover import redact_url, url_secrets

    assert url_secrets(path) == secrets and redact_url(path) == shown


def test_cli_ingests_scenes_given_as_urls(served: tuple[Path, str], tmp_path: Path, capsys) -> None:
    """Two dated COGs by URL become a two-date cube; a missing URL is quarantined with the HTTP
    status; running the command again reads nothing (the stamps come from HTTP HEAD)."""
    from flows.cli import main

    root, base = served
    for i, d in enumerate(("2020-01-01", "2020-01-11")):
        with rasterio.open(root / f"scene_{d}.tif", "w", driver="COG", width=32, height=32, count=2,
                           dtype="uint16", crs="EPSG:32633", transform=from_origin(600000, 5000000, 10, 10),
                           nodata=0) as ds:
            ds.write(np.full((2, 32, 32), [[[100 + i]], [[200 + i]]], np.uint16))
    urls = [f"{base}/scene_2020-01-01.tif", f"{base}/scene_2020-01-11.tif", f"{base}/gone_2020-01-21.tif"]
    out = tmp_path / "remote.zarr"
    assert main(["ingest", *urls, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "quarantined gone_2020-01-21.tif: cannot be read by GDAL" in printed and "404" in printed
    ds = xr.open_zarr(out)
    assert ds.sizes["time"] == 2 and ds.valid.values.all()
    np.testing.assert_array_equal(ds.data.isel(x=0, y=0).values, [[100, 200], [101, 201]])
    assert main(["ingest", *urls, "--out", str(out)]) == 0
    assert "0 scenes ingested" in capsys.readouterr().out


def test_credentials_in_urls_are_neither_kept_nor_shown(served: tuple[Path, str], tmp_path: Path, capsys,
                                                        logged) -> None:
    """A user:password URL is refused (GDAL's own settings carry credentials), without printing the
    password; a presigned URL is ingested, its catalog readable by its owner only, with a warning."""
    import os

    from flows.cli import main
    from tasks.discover import redact_url

    root, base = served
    with rasterio.open(root / "scene_2020-01-01.tif", "w", driver="COG", width=16, height=16, count=1,
                       dtype="uint16", crs="EPSG:32633", transform=from_origin(600000, 5000000, 10, 10),
                       nodata=0) as ds:
        ds.write(np.full((1, 16, 16), 7, np.uint16))
    secret = base.replace("http://", "http://alice:HUNTER2@") + "/scene_2020-01-01.tif"
    assert main(["ingest", secret, "--out", str(tmp_path / "a.zarr")]) == 2
    err = capsys.readouterr().err
    assert "HUNTER2" not in err and "http://***@127.0.0.1" in err and "GDAL_HTTP_USERPWD" in err
    assert not (tmp_path / "a.zarr.catalog.yaml").exists()

    signed = f"{base}/scene_2020-01-01.tif?X-Amz-Signature=SIGSECRET&X-Amz-Date=20200101"
    assert redact_url(signed).endswith("?X-Amz-Signature=***&X-Amz-Date=20200101")
    with logged("tasks.adhoc") as messages:
        assert main(["ingest", signed, "--out", str(tmp_path / "s.zarr")]) == 0
    catalog = tmp_path / "s.zarr.catalog.yaml"
    assert os.stat(catalog).st_mode & 0o077 == 0  # the signature is in it: the owner's only
    assert "signed or authorised in their query (X-Amz-Signature)" in " ".join(messages)
    assert "SIGSECRET" not in " ".join(messages) + capsys.readouterr().out

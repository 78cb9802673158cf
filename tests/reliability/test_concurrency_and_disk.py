"""Two ingests of one cube at once; the cube lock across crashes; full and read-only disks."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.reliability import REPO, Zygote, concurrent_ingest, disk_full
from tasks.locks import CubeLockedError, cube_lock, lock_path


def test_two_concurrent_ingests_of_one_cube_equal_one_run(small_sample: Path, zyg: Zygote, tmp_path: Path) -> None:
    result = concurrent_ingest(zyg, small_sample, tmp_path)
    assert result["ok"], result["problems"]
    added = [r["dates_added"] for r in result["runs"]]
    assert sorted(map(len, added))[0] == 0, f"both runs added dates: {added}"  # the second found nothing new


def _holder(cube: Path) -> subprocess.Popen[str]:
    code = ("import sys, time\nfrom tasks.locks import cube_lock\n"
            f"with cube_lock({str(cube)!r}, timeout=0):\n    print('held', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_the_cube_lock_names_its_holder_and_dies_with_it(tmp_path: Path) -> None:
    cube = tmp_path / "cubes" / "planet.zarr"
    proc = _holder(cube)
    try:
        t0 = time.monotonic()
        with pytest.raises(CubeLockedError, match=rf"pid {proc.pid} on .* did not finish within 0 s"), \
                cube_lock(cube, timeout=0.5, poll=0.05):
            pass
        assert time.monotonic() - t0 >= 0.5
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # a crash of the holder: no cleanup runs
        proc.wait()
    assert lock_path(cube).exists()  # the file stays; the kernel dropped the lock
    with cube_lock(cube, timeout=0), cube_lock(cube, timeout=0):  # re-entrant in one thread
        pass
    with pytest.raises(ValueError, match="timeout must be >= 0"), cube_lock(cube, timeout=-1):
        pass


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["disk-full", "read-only"])
def test_a_failing_disk_fails_cleanly_and_leaves_the_store_intact(
    small_sample: Path, zyg: Zygote, tmp_path: Path, code: int
) -> None:
    result = disk_full(zyg, small_sample, tmp_path, code=code)
    assert result["setup_ok"]
    assert result["failed_cleanly"], result["error"]
    assert os.strerror(code) in result["error"]
    assert result["bytes_changed"] == 0
    assert result["recovered"], "the run after the disk was fixed did not add the dates"

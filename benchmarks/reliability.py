"""Reliability harness and benchmark: kill points, bad inputs, concurrent runs, full disks.

The functions here are what ``tests/reliability/`` runs (the tests import them), and
``fusioncube bench reliability --out FILE.json [--size quick]`` runs them all and reports:

- **kill points** (:func:`kill_harness`): the chain ingest -> patch -> gapfill (tiny epochs) on
  the ``small`` sample area runs in a child process with :mod:`tasks.faults` counting its I/O
  events (zarr object writes, renames, manifest fsyncs, torch checkpoint saves). A clean run gives
  the event list; the harness draws the kill points from it with a fixed seed, stratified over
  (stage, event kind) so that chunk writes, manifest writes, artifact renames, chunk-folder moves
  and checkpoint saves of every stage are all hit, plus one point in the middle of the cube's
  creation (from its template and first part, which must then be reused). Each point: SIGKILL there, check every manifest
  left on disk describes a complete artifact (its arrays equal the reference run's), re-run to
  completion with the event log on, check the final cube and products equal the uninterrupted
  reference run's, and that the re-run wrote nothing into an artifact finished before the kill
  (a finished part store, a committed time step of the cube, a finished stage store).
- **bad inputs** (:func:`bad_input_corpus`): the corpus of ``tests/reliability/make_bad_inputs.py``
  against an existing cube: each input must give a message naming the file or key and the reason,
  scene-level ones are quarantined while good scenes are ingested, and no byte of the store that
  was there before changes (except the manifest that records the run).
- **concurrent runs** (:func:`concurrent_ingest`): two processes ingest the same cube at once.
- **disk full / read-only** (:func:`disk_full`): ``OSError(ENOSPC)`` / ``OSError(EROFS)`` injected
  at write events of an append: the run fails with that error and the store is byte-identical.

Child processes are forked from a *zygote* (:class:`Zygote`): one process that imports the
pipeline and warms Great Expectations up once, then forks a child per run, so a run costs its
work and not 10-20 s of imports. Children are real processes, SIGKILLed for real.

    python -m benchmarks.reliability --out reliability.json [--quick]
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import importlib.util
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._cli import write_result

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO / "data_catalog.yaml"
BAD_INPUTS = REPO / "tests" / "reliability" / "make_bad_inputs.py"
log = logging.getLogger(__name__)

# the model stage of the chain: gap filling with a tiny LRTC-Net (seconds, deterministic on CPU)
GAPFILL = {"epochs": 1, "layers": 2, "patch": 16, "seed": 0}
DATES_PER_PART = 2  # the small sample's 6 Planet dates -> 3 parts


# -- the chain a child runs ---------------------------------------------------------------------
def _catalog(sample: Path, data: Path) -> Any:
    from tasks.catalog import load_catalog

    return load_catalog(CATALOG, env={"FUSIONCUBE_SAMPLE": str(sample), "FUSIONCUBE_DATA": str(data)})


def products(sample: Path, data: Path) -> dict[str, Path]:
    """Where the chain's artifacts are: cube, parts folder, patches, filled, weights."""
    from tasks.gapfill import weights_path
    from tasks.ingest import parts_dir

    cat = _catalog(sample, data)
    cube = cat.cube_path("planet")
    sd = cat.stage_dir("planet")
    return {"cube": cube, "parts": parts_dir(cube), "patches": sd / "patches.zarr",
            "filled": sd / "filled.zarr", "weights": weights_path(sd / "filled.zarr")}


def run_chain(sample: str, data: str) -> dict[str, Any]:
    """Ingest the Planet cube, cut patches, gap-fill: the calls the pipeline flow makes
    (stages with ``overwrite=True``: a stage output without a manifest is rebuilt)."""
    from tasks.gapfill import gapfill_cube
    from tasks.ingest import ingest_cube
    from tasks.patch import make_patches

    cat = _catalog(Path(sample), Path(data))
    report = ingest_cube(cat, "planet", workers=1, dates_per_part=DATES_PER_PART)
    p = products(Path(sample), Path(data))
    make_patches(p["cube"], p["patches"], **cat.patch_params("planet").model_dump(), overwrite=True)
    gapfill_cube(p["cube"], p["filled"], **GAPFILL, overwrite=True)
    return {"parts": report.parts, "parts_reused": report.parts_reused, "time_steps": report.time_steps}


def run_ingest(sample: str, data: str, cube: str = "planet", lock_timeout: float = 600.0) -> dict[str, Any]:
    """One ingest of ``cube`` (used by the concurrency and disk-full runs)."""
    from tasks.ingest import ingest_cube

    report = ingest_cube(_catalog(Path(sample), Path(data)), cube, workers=1, dates_per_part=DATES_PER_PART,
                         lock_timeout=lock_timeout)
    return {"time_steps": report.time_steps, "dates_added": report.dates_added,
            "ingested": [r["scene"] for r in report.ingested]}


TASKS = {"chain": run_chain, "ingest": run_ingest}


# -- the zygote ----------------------------------------------------------------------------------
def _warm() -> None:
    """Import the pipeline and build Great Expectations' context once (no threads, no zarr I/O:
    the zygote must stay safe to fork)."""
    import tqdm

    tqdm.tqdm.monitor_interval = 0  # no monitor thread in a process that forks
    import torch

    torch.set_num_threads(1)
    import tasks.gapfill
    import tasks.ingest
    import tasks.patch  # noqa: F401
    from tasks.catalog import load_catalog
    from tasks.ingest import validation_rules
    from tasks.validate import profile_array, validate_profiles

    cat = load_catalog(CATALOG)
    for name, spec in cat.sources.items():
        prof = profile_array(name, np.ones((spec.band_count or 1, 4, 4), np.uint16), nodata=0, scale=1.0,
                             offset=0.0, crs="EPSG:32615", categorical=spec.kind == "categorical")
        validate_profiles([prof], validation_rules(spec))


def _child(req: dict[str, Any]) -> None:
    """In the forked child: redirect output, arm the faults, run the task, write its result."""
    out = os.open(req["output"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.environ.update(req.get("env", {}))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tasks import faults

    faults.install()
    result: dict[str, Any]
    code = 0
    try:
        result = {"ok": True, "value": TASKS[req["task"]](**req["args"])}
    except BaseException as exc:  # reported to the parent, which decides
        result = {"ok": False, "type": type(exc).__name__, "error": str(exc),
                  "errno": getattr(exc, "errno", None), "traceback": traceback.format_exc()}
        code = 1
    Path(req["result"]).write_text(json.dumps(result, default=str))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _zygote_main() -> None:
    _warm()
    proto_in, proto_out = sys.stdin, sys.stdout
    proto_out.write(json.dumps({"ready": os.getpid()}) + "\n")
    proto_out.flush()
    for line in proto_in:
        req = json.loads(line)
        if req["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                try:
                    _child(req)
                finally:
                    os._exit(70)
            reply: dict[str, Any] = {"pid": pid}
        elif req["op"] == "wait":
            _, status = os.waitpid(req["pid"], 0)
            reply = {"status": os.waitstatus_to_exitcode(status)}
        else:
            reply = {"error": f"unknown op {req['op']!r}"}
        proto_out.write(json.dumps(reply) + "\n")
        proto_out.flush()


class Zygote:
    """A warmed-up process that forks one child per run (see the module docstring)."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        for k in ("FUSIONCUBE_KILL_AT", "FUSIONCUBE_FAIL_AT", "FUSIONCUBE_FAULT_LOG"):
            env.pop(k, None)
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.reliability", "--zygote"], cwd=REPO,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self._read()
        if "ready" not in ready:
            raise RuntimeError(f"reliability zygote did not start: {ready}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"reliability zygote exited (code {self.proc.wait()})")
        return json.loads(line)

    def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def spawn(self, task: str, workdir: Path, *, env: dict[str, str] | None = None, **args: Any) -> dict[str, Any]:
        """Start ``task(**args)`` in a forked child; returns a handle for :meth:`wait`."""
        workdir.mkdir(parents=True, exist_ok=True)
        tag = f"{task}-{time.monotonic_ns()}"
        req = {"op": "spawn", "task": task, "args": {k: str(v) if isinstance(v, Path) else v for k, v in args.items()},
               "env": env or {}, "output": str(workdir / f"{tag}.log"), "result": str(workdir / f"{tag}.json")}
        return {**req, "pid": self._ask(req)["pid"]}

    def wait(self, handle: dict[str, Any]) -> dict[str, Any]:
        """Exit code (negative: killed by that signal), the task's result or error, its log."""
        code = self._ask({"op": "wait", "pid": handle["pid"]})["status"]
        res = Path(handle["result"])
        out = json.loads(res.read_text()) if res.exists() else {"ok": False, "error": "no result (killed)"}
        logtext = Path(handle["output"]).read_text() if Path(handle["output"]).exists() else ""
        return {"code": code, **out, "log": logtext}

    def run(self, task: str, workdir: Path, *, env: dict[str, str] | None = None, **args: Any) -> dict[str, Any]:
        return self.wait(self.spawn(task, workdir, env=env, **args))

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def zygote() -> Iterator[Zygote]:
    z = Zygote()
    try:
        yield z
    finally:
        z.close()


# -- store comparisons ---------------------------------------------------------------------------
def store_digest(path: Path, *, skip_suffixes: tuple[str, ...] = ()) -> dict[str, str]:
    """``relative path -> md5`` of every file under ``path`` (a file: itself)."""
    path = Path(path)
    if path.is_file():
        return {path.name: hashlib.md5(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and not p.name.endswith(skip_suffixes)}


def bytes_changed(before: dict[str, str], after: dict[str, str], root: Path) -> int:
    """Bytes of files that changed or vanished between two digests (new files do not count)."""
    changed = 0
    for name, digest in before.items():
        if after.get(name) != digest:
            p = root / name
            changed += p.stat().st_size if p.exists() else 1
    return changed


def _arrays(path: Path, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    import zarr

    g = zarr.open_group(str(path), mode="r", use_consolidated=False)
    return {k: np.asarray(g[k][...]) for k in (names or tuple(sorted(g.array_keys())))}


def _equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    bad = [k for k in a.keys() | b.keys() if k not in a or k not in b]
    for k in a.keys() & b.keys():
        if a[k].shape != b[k].shape or not np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"):
            bad.append(k)
    return sorted(bad)


def _weights(path: Path) -> dict[str, np.ndarray]:
    from tasks.checkpoint import load_state_dict

    return {k: v.numpy() for k, v in load_state_dict(path).items()}


def _manifest_paths(data: Path) -> list[Path]:
    return sorted(data.rglob("*.manifest.json"))


def _artifact_of(manifest: Path) -> Path:
    return manifest.with_name(manifest.name.removesuffix(".manifest.json"))


def check_manifests_complete(data: Path, ref: dict[str, Any]) -> list[str]:
    """Every manifest under ``data`` must describe a complete artifact: returns the violations."""
    from tasks.checkpoint import read_manifest

    problems = []
    dates = list(ref["dates"])
    for mpath in _manifest_paths(data):
        art = _artifact_of(mpath)
        m = read_manifest(art)
        assert m is not None
        try:
            if m.stage == "ingest":
                n = int(m.outputs["time_steps"])
                got = _arrays(art, ("data", "valid"))
                if got["data"].shape[0] < n or m.outputs["dates"] != dates[:n]:
                    problems.append(f"{art}: manifest lists {n} steps, store has {got['data'].shape[0]}")
                elif _equal({k: v[:n] for k, v in got.items()}, {k: ref["cube"][k][:n] for k in got}):
                    problems.append(f"{art}: the {n} time steps of its manifest differ from the reference")
            elif m.stage == "ingest-part":
                days = [d[:10] for d in m.outputs["dates"]]
                if days:
                    idx = [dates.index(d) for d in days]
                    got = _arrays(art, ("data", "valid"))
                    if _equal(got, {k: ref["cube"][k][idx] for k in got}):
                        problems.append(f"{art}: finished part differs from the reference dates {days}")
            elif m.stage in ("patch", "gapfill") and _equal(_arrays(art), ref[m.stage]):
                problems.append(f"{art}: finished {m.stage} store differs from the reference")
        except Exception as exc:  # an unreadable store behind a manifest is the violation
            problems.append(f"{art}: has a manifest but cannot be read ({type(exc).__name__}: {exc})")
    return problems


def reference(z: Zygote, sample: Path, root: Path) -> dict[str, Any]:
    """An uninterrupted run of the chain with the event log on: its products and its events."""
    from tasks import faults
    from tasks.checkpoint import read_manifest

    data = root / "reference"
    logf = root / "reference-events.log"
    res = z.run("chain", root / "runs", env={faults.ENV_LOG: str(logf)}, sample=sample, data=data)
    if res["code"] != 0:
        raise RuntimeError(f"the reference run failed:\n{res.get('traceback') or res['log'][-3000:]}")
    p = products(sample, data)
    return {
        "data": data,
        "events": faults.parse_log(logf),
        "dates": read_manifest(p["cube"]).outputs["dates"],
        "cube": _arrays(p["cube"], ("data", "valid", "time", "landcover")),
        "patch": _arrays(p["patches"]),
        "gapfill": _arrays(p["filled"]),
        "weights": _weights(p["weights"]),
    }


def _phase(path: str, data: Path) -> str:
    rel = path.replace(str(data), "")
    if "patches.zarr" in rel:
        return "patch"
    if "filled.zarr" in rel:
        return "gapfill"
    if ".parts" in rel:
        return "ingest-part"
    return "ingest-cube"


def choose_kill_points(events: list[tuple[int, str, str]], data: Path, *, count: int, seed: int) -> list[int]:
    """``count`` event numbers drawn with ``seed``, round-robin over the (stage, kind) strata
    so every kind of I/O boundary of every stage is hit, then at random."""
    strata: dict[tuple[str, str], list[int]] = {}
    for n, kind, path in events:
        strata.setdefault((_phase(path, data), kind), []).append(n)
    rng = random.Random(seed)
    pools = {k: rng.sample(v, len(v)) for k, v in sorted(strata.items())}
    chosen: list[int] = []
    while len(chosen) < min(count, len(events)):
        for k in sorted(pools):
            if pools[k] and len(chosen) < count:
                n = pools[k].pop()
                if n not in chosen:
                    chosen.append(n)
    return sorted(chosen)


def _finished_at_kill(data: Path, prods: dict[str, Path]) -> tuple[list[Path], dict[str, str]]:
    """Artifacts with a manifest (not the cube) and the cube's committed chunk files."""
    from tasks.checkpoint import read_manifest

    finished = [_artifact_of(m) for m in _manifest_paths(data) if _artifact_of(m) != prods["cube"]]
    committed: dict[str, str] = {}
    m = read_manifest(prods["cube"])
    if m is not None:
        n = int(m.outputs["time_steps"])
        for var in ("data", "valid"):
            for t in range(n):  # the cube's time chunk is 1 on this catalog
                for f in sorted((prods["cube"] / var / "c" / str(t)).rglob("*")):
                    if f.is_file():
                        committed[str(f)] = hashlib.md5(f.read_bytes()).hexdigest()
    return finished, committed


def kill_once(z: Zygote, sample: Path, root: Path, ref: dict[str, Any], kill_at: int) -> dict[str, Any]:
    """Kill the chain at event ``kill_at``, check, resume, check. Returns the findings."""
    from tasks import faults
    from tasks.checkpoint import read_manifest

    data = root / f"kill-{kill_at:04d}"
    shutil.rmtree(data, ignore_errors=True)
    killed_log = root / f"kill-{kill_at:04d}-events.log"
    killed_log.unlink(missing_ok=True)
    first = z.run("chain", root / "runs", env={faults.ENV_KILL: str(kill_at), faults.ENV_LOG: str(killed_log)},
                  sample=sample, data=data)
    last = faults.parse_log(killed_log)[-1:] or [(0, "?", "?")]
    out: dict[str, Any] = {"kill_at": kill_at, "kind": last[0][1], "stage": _phase(last[0][2], data),
                           "path": last[0][2].replace(str(data), "<data>"), "problems": []}
    if first["code"] != -signal.SIGKILL:
        out["problems"].append(f"the run was not killed (exit {first['code']}): {first.get('error')}")
    prods = products(sample, data)
    out["problems"] += check_manifests_complete(data, ref)
    finished, committed = _finished_at_kill(data, prods)
    cube_m = read_manifest(prods["cube"])
    cube_done = cube_m is not None and int(cube_m.outputs["time_steps"]) == len(ref["dates"])

    resume_log = root / f"kill-{kill_at:04d}-resume.log"
    resume_log.unlink(missing_ok=True)
    again = z.run("chain", root / "runs", env={faults.ENV_LOG: str(resume_log)}, sample=sample, data=data)
    if again["code"] != 0:
        out["problems"].append(f"the re-run failed: {again.get('type')}: {again.get('error')}")
        out["recovered"] = False
        return out
    out["parts_reused"] = again["value"]["parts_reused"]
    got_cube = _arrays(prods["cube"], ("data", "valid", "time", "landcover"))
    for name, got, want in (("cube", got_cube, ref["cube"]), ("patches", _arrays(prods["patches"]), ref["patch"]),
                            ("filled", _arrays(prods["filled"]), ref["gapfill"]),
                            ("weights", _weights(prods["weights"]), ref["weights"])):
        diff = _equal(got, want)
        if diff:
            out["problems"].append(f"{name} differs from the uninterrupted run in {diff}")
    # nothing finished before the kill is written again
    for n, kind, path in faults.parse_log(resume_log):
        target = Path(path.split(".partial")[0]) if kind == "zarr-put" else Path(path)
        hit = next((f for f in finished if target == f or f in target.parents
                    or target == f.with_name(f.name + ".manifest.json")), None)
        if hit is not None:
            out["problems"].append(f"re-run event {n} ({kind}) wrote into {hit.name}, finished before the kill")
        elif str(target) in committed:
            out["problems"].append(f"re-run event {n} ({kind}) rewrote committed cube chunk {target}")
        elif cube_done and target == prods["cube"].with_name(prods["cube"].name + ".manifest.json"):
            out["problems"].append("re-run rewrote the cube manifest though the cube was complete")
    for f, digest in committed.items():
        if hashlib.md5(Path(f).read_bytes()).hexdigest() != digest:
            out["problems"].append(f"committed chunk {f} changed")
    if prods["parts"].exists():
        out["problems"].append(f"parts folder left behind: {sorted(p.name for p in prods['parts'].iterdir())}")
    # temporaries of the killed write still on disk after the re-run (harmless, but they leak)
    out["leftovers"] = sorted(str(p.relative_to(data)) for p in data.rglob("*")
                              if ".tmp-" in p.name or p.name.endswith(".partial"))
    out["recovered"] = not out["problems"]
    shutil.rmtree(data, ignore_errors=True)
    return out


def kill_harness(sample: Path, root: Path, *, points: int = 20, seed: int = 0,
                 z: Zygote | None = None) -> dict[str, Any]:
    """The kill-point campaign (see the module docstring). Returns the summary and each point."""
    root.mkdir(parents=True, exist_ok=True)
    with (zygote() if z is None else _same(z)) as zz:
        ref = reference(zz, sample, root)
        chosen = choose_kill_points(ref["events"], ref["data"], count=points, seed=seed)
        # plus one in the middle of the cube's creation (events up to its first manifest): the
        # part it is made from is finished and nothing records the cube yet, so the re-run must
        # rebuild it and reuse that part (the middle: threads shift event numbers between runs)
        creation = []
        for n, kind, path in ref["events"]:
            if _phase(path, ref["data"]) == "ingest-cube":
                creation.append(n)
                if kind == "rename" and path.endswith(".zarr.manifest.json"):
                    break
        if creation and creation[len(creation) // 2] not in chosen:
            chosen = sorted([*chosen, creation[len(creation) // 2]])
        results = [kill_once(zz, sample, root, ref, n) for n in chosen]
    covered = sorted({f"{r['stage']}:{r['kind']}" for r in results})
    return {"events": len(ref["events"]), "kill_points": len(results),
            "kill_points_recovered": sum(bool(r["recovered"]) for r in results),
            "covered": covered, "points": results}


@contextmanager
def _same(z: Zygote) -> Iterator[Zygote]:
    yield z


# -- bad inputs ------------------------------------------------------------------------------------
def load_bad_inputs_module() -> Any:
    """``tests/reliability/make_bad_inputs.py`` (the corpus generator) as a module."""
    spec = importlib.util.spec_from_file_location("make_bad_inputs", BAD_INPUTS)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{BAD_INPUTS}: the bad-input generator is missing")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_bad_inputs", mod)
    spec.loader.exec_module(mod)
    return mod


def bad_input_corpus(sample: Path, root: Path) -> dict[str, Any]:
    """Run every case of the bad-input corpus; see ``make_bad_inputs.run_corpus``."""
    return load_bad_inputs_module().run_corpus(sample, root)


# -- concurrency and full disks ----------------------------------------------------------------------
def concurrent_ingest(z: Zygote, sample: Path, root: Path, *, lock_timeout: float = 600.0) -> dict[str, Any]:
    """Two processes ingest the same cube at once; the result must equal one run's."""
    from tasks.checkpoint import read_manifest

    data = root / "concurrent"
    shutil.rmtree(data, ignore_errors=True)
    a = z.spawn("ingest", root / "runs", sample=sample, data=data, lock_timeout=lock_timeout)
    b = z.spawn("ingest", root / "runs", sample=sample, data=data, lock_timeout=lock_timeout)
    ra, rb = z.wait(a), z.wait(b)
    cat = _catalog(sample, data)
    path = cat.cube_path("planet")
    m = read_manifest(path)
    ref = root / "concurrent-ref"
    shutil.rmtree(ref, ignore_errors=True)
    solo = z.run("ingest", root / "runs", sample=sample, data=ref)
    problems = [f"run {i}: {r.get('type')}: {r.get('error')}" for i, r in ((1, ra), (2, rb), (3, solo)) if r["code"]]
    if not problems and m is not None:
        want = _arrays(_catalog(sample, ref).cube_path("planet"), ("data", "valid", "time"))
        diff = _equal(_arrays(path, ("data", "valid", "time")), want)
        if diff:
            problems.append(f"the cube differs from a single run's in {diff}")
        added = sorted(ra["value"]["dates_added"] + rb["value"]["dates_added"])
        if added != sorted(m.outputs["dates"]) or len(set(added)) != len(added):
            problems.append(f"dates added by the two runs {added} != the cube's {m.outputs['dates']}")
    return {"ok": not problems and m is not None, "problems": problems,
            "runs": [{"dates_added": r.get("value", {}).get("dates_added"), "error": r.get("error")} for r in (ra, rb)]}


def disk_full(z: Zygote, sample: Path, root: Path, *, code: int = errno.ENOSPC, at: int = 3) -> dict[str, Any]:
    """An append that hits ``OSError(code)`` from its ``at``-th write event on: clean failure,
    store byte-identical, and a later run (space freed) completes."""
    from tasks import faults

    data = root / f"full-{code}"
    shutil.rmtree(data, ignore_errors=True)
    held = root / f"full-{code}-scenes"
    shutil.rmtree(held, ignore_errors=True)
    shutil.copytree(sample, held)
    late = sorted((held / "planet").glob("*_AnalyticMS_SR.tif"))[-2:]
    stash = root / f"full-{code}-late"
    stash.mkdir(exist_ok=True)
    for tif in late:
        for f in (tif, tif.with_name(tif.name.replace("_AnalyticMS_SR.tif", "_udm2.tif"))):
            shutil.move(f, stash / f.name)
    first = z.run("ingest", root / "runs", sample=held, data=data)
    cube = _catalog(held, data).cube_path("planet")
    before = store_digest(cube.parent)
    for f in stash.iterdir():
        shutil.move(f, held / "planet" / f.name)
    failed = z.run("ingest", root / "runs", env={faults.ENV_FAIL: f"{at}:{code}"}, sample=held, data=data)
    after = store_digest(cube.parent, skip_suffixes=(".lock",))
    changed = bytes_changed({k: v for k, v in before.items() if not k.endswith(".lock")}, after, cube.parent)
    extra = sorted(set(after) - set(before))
    again = z.run("ingest", root / "runs", sample=held, data=data)
    return {
        "errno": code,
        "setup_ok": first["code"] == 0,
        "failed_cleanly": failed["code"] == 1 and failed.get("errno") == code,
        "error": failed.get("error"),
        "bytes_changed": changed,
        "new_files": extra,
        "recovered": again["code"] == 0 and len(again["value"]["dates_added"]) == 2,
    }


# -- the benchmark -----------------------------------------------------------------------------------
def run(out: Path, *, quick: bool = False) -> dict[str, Any]:
    """Run everything and write ``out`` (JSON with a ``summary``) and a markdown table beside it."""
    from tasks.sample_area import generate_sample_area

    out = Path(out)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fusioncube-reliability-") as tmp:
        root = Path(tmp)
        sample = root / "sample"
        generate_sample_area(sample, size="small", seed=3)
        with zygote() as z:
            kills = kill_harness(sample, root / "kills", points=20 if quick else 40, seed=0, z=z)
            conc = concurrent_ingest(z, sample, root / "concurrency")
            disks = [disk_full(z, sample, root / "disk", code=c) for c in (errno.ENOSPC, errno.EROFS)]
        bad = bad_input_corpus(sample, root / "bad")
    summary = {
        "kill_points": kills["kill_points"],
        "kill_points_recovered": kills["kill_points_recovered"],
        "bad_inputs": bad["bad_inputs"],
        "bad_inputs_clear_error": bad["bad_inputs_clear_error"],
        "bytes_changed_in_existing_stores": bad["bytes_changed_in_existing_stores"]
        + sum(d["bytes_changed"] for d in disks),
        "concurrent_runs_ok": conc["ok"],
        "disk_full_clean": all(d["failed_cleanly"] and d["recovered"] and not d["bytes_changed"] for d in disks),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    result = {"summary": summary, "kills": kills, "bad_inputs": bad, "concurrency": conc, "disk": disks,
              "quick": quick, "cpu_count": os.cpu_count()}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, result, indent=2, default=str)
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items())
    cases = "\n".join(f"| {c['case']} | {'yes' if c['clear'] else 'NO'} | {c['message'][:140]} |"
                      for c in bad["cases"])
    points = "\n".join(f"| {p['kill_at']} | {p['stage']} | {p['kind']} | {'yes' if p['recovered'] else 'NO'} |"
                       for p in kills["points"])
    out.with_suffix(".md").write_text(
        f"# Reliability benchmark\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        f"## Kill points ({kills['events']} I/O events in a clean run)\n\n| event | stage | kind | recovered |\n"
        f"|---|---|---|---|\n{points}\n\n## Bad inputs\n\n| case | clear message | message |\n|---|---|---|\n{cases}\n"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reliability.json"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--zygote", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.zygote:
        _zygote_main()
        return 0
    logging.basicConfig(level=logging.INFO)
    result = run(args.out, quick=args.quick)
    sys.stdout.write(json.dumps(result["summary"], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

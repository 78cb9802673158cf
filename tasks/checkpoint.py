"""The stage/checkpoint contract shared by every stage (DESIGN.md, "Stages").

An artifact is a file or a directory (usually a Zarr store) with a manifest beside it,
``<artifact>.manifest.json``. The manifest records the stage, its key, its parameters, the keys
of its inputs and the code version. The key is a hash of all of those, so a finished artifact
whose manifest carries the key a run would compute is reused instead of recomputed.

Writes are atomic: the artifact is built under a temporary sibling name and renamed into place
only when complete, and the manifest is written last (itself atomically). A killed run leaves at
most a temporary folder (cleaned on the next run) or an artifact without a manifest, which is never
taken for finished.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from tasks.errors import CheckpointError
from tasks.locks import CubeLockedError, cube_lock, lock_path

__all__ = [
    "Manifest",
    "StaleCodeError",
    "atomic_artifact",
    "code_modules",
    "code_version",
    "fingerprint",
    "load_checkpoint",
    "load_state_dict",
    "manifest_path",
    "product_attrs",
    "product_checkpoint",
    "read_manifest",
    "remove_artifact",
    "resumable_artifact",
    "reusable",
    "reuse_or_refuse",
    "save_checkpoint",
    "stage_key",
    "torch_load_refusal",
    "write_manifest",
]

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
_TMP_MARK = ".tmp-"
#: the work folder of a resumable stage: ``<artifact>.resume-<key>`` (:func:`resumable_artifact`)
RESUME_MARK = ".resume-"


@dataclass(frozen=True)
class Manifest:
    """What a finished artifact is and how it was made."""

    stage: str
    key: str
    params: dict[str, Any]
    inputs: dict[str, str]
    code_version: str
    # to the microsecond: a run that starts within the second a manifest was written must still
    # tell that manifest from one it writes itself (tasks.pipeline_report)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="microseconds"))
    outputs: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    #: the software and machine it was made with (``tasks.provenance.environment``, taken when the
    #: manifest is made); empty in manifests written before it was recorded
    environment: dict[str, Any] = field(default_factory=lambda: _current_environment())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)


def manifest_path(artifact: str | Path) -> Path:
    """``cube.zarr`` -> ``cube.zarr.manifest.json`` (beside the artifact, not inside it)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


#: the packages whose modules make the data: a stage's code version covers every one it imports
CODE_PACKAGES = ("tasks", "fusion_models")
#: modules that describe or log products and never make them: a stage's code version does not
#: follow their imports (``tasks.info`` reads every stage's products to describe them)
REPORTING_MODULES = frozenset({"tasks.info", "tasks.runlog", "tasks.pipeline_report", "tasks.provenance"})
_ROOT = Path(__file__).resolve().parents[1]


def _source_stamps() -> dict[str, tuple[int, int]]:
    """(mtime, size) of every module file of the project's packages, as this process first saw them."""
    stamps = {}
    for package in ("tasks", "flows", "fusion_models"):
        for f in (_ROOT / package).glob("*.py"):
            with contextlib.suppress(OSError):
                st = f.stat()
                stamps[str(f)] = (st.st_mtime_ns, st.st_size)
    return stamps


#: taken when the first project module is imported (this one comes first: every stage imports it)
IMPORTED_SOURCES = _source_stamps()


class StaleCodeError(RuntimeError):
    """The source of a module changed since this process imported it: the code it runs is not the
    code on disk, whose hash a manifest would record."""


def _module_source(name: str) -> str:
    return inspect.getsource(importlib.import_module(name))


@cache
def _project_modules() -> frozenset[str]:
    return frozenset(
        package if f.stem == "__init__" else f"{package}.{f.stem}"
        for package in CODE_PACKAGES for f in (_ROOT / package).glob("*.py")
    )


#: an import statement: ``from BASE import NAMES`` (parenthesised over lines, or to the line's end)
#: or ``import MODULES``, at any indentation (inside functions too)
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)|import[ \t]+([^\n]*))", re.M)


def _names(text: str) -> list[str]:
    """``a as b, c  # note`` -> ``["a", "c"]``."""
    return [part.split()[0] for part in re.sub(r"#[^\n]*", "", text).strip("()").split(",") if part.strip()]


@cache
def _imports(name: str) -> frozenset[str]:
    """The modules of :data:`CODE_PACKAGES` that module ``name`` imports anywhere in its source,
    inside functions too: read from its text, not from what has run (and not with ``ast``, whose
    parser Python 3.11 does not let two threads run at once: stage tasks version their code in
    parallel). A statement quoted in a docstring counts too: a module more, never one less."""
    package = name if name in CODE_PACKAGES else name.rpartition(".")[0]
    named: set[str] = set()
    for match in _IMPORT.finditer(_module_source(name)):
        base, names, plain = match.groups()
        if plain is not None:
            named.update(_names(plain))
            continue
        if base.startswith("."):
            base = importlib.util.resolve_name(base, package)
        for alias in _names(names):  # ``from tasks import cube`` names a module, ``from tasks.cube import x`` a name
            module = f"{base}.{alias}"
            named.add(module if module in _project_modules() else base)
    return frozenset(named & _project_modules() - REPORTING_MODULES)


@cache
def code_modules(*roots: str) -> tuple[str, ...]:
    """``roots`` and every module of :data:`CODE_PACKAGES` they import, directly or through
    another (``tasks.anomalies`` -> ``fusion_models.patching``, ``tasks.cube``, ...), sorted."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_imports(name) - seen)
    return tuple(sorted(seen))


def code_version(*modules: str) -> str:
    """Version string of the code behind a stage: package version + hash of the source of
    ``modules`` and of every project module they import (:func:`code_modules`).

    Editing a stage's pure function, its task or any helper they reach changes its code version
    and so its key; nobody keeps a list of them by hand. A process whose modules changed on disk
    after it imported them (a long-lived Dask worker when the project is updated) refuses, at
    every call: it would run its old code under a key that later runs, from the code on disk,
    never find current, with nothing saying why.
    """
    for name in code_modules(*modules):
        module = importlib.import_module(name)
        path = str(Path(module.__file__ or "").resolve())
        with contextlib.suppress(OSError):
            st = Path(path).stat()
            if path in IMPORTED_SOURCES and IMPORTED_SOURCES[path] != (st.st_mtime_ns, st.st_size):
                raise StaleCodeError(
                    f"{path} changed since this process (pid {os.getpid()}) imported it: it would run the old "
                    f"code and record the new one's version. Restart it: for an external Dask cluster, restart "
                    f"its workers (`dask worker ...`) after updating fusioncube")
    return _source_version(*modules)


@cache
def _source_version(*modules: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("fusioncube")
    except PackageNotFoundError:  # running from a source tree without install
        pkg = "0+unknown"
    digest = hashlib.sha256()
    for name in code_modules(*modules):
        digest.update(_module_source(name).encode())
    return f"{pkg}+{digest.hexdigest()[:12]}"


def product_attrs(stage: str, key: str, params: Mapping[str, Any], *, code: str,
                  inherit: Mapping[str, Any] | None = None, **own: Any) -> dict[str, Any]:
    """The global attributes of a stage's Zarr product: ``inherit``'s (those of the input cube,
    for a product that is a cube again), the stage's ``own``, and how it was made: its own
    ``created`` and ``software``, the stage, key and parameters, and a line added to CF's
    ``history``. A store copied away from its manifest still says where it came from."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    attrs = {k: v for k, v in (inherit or {}).items() if not str(k).startswith("fusioncube_")}
    history = str(attrs.get("history") or "").rstrip("\n")
    line = " ".join([f"{now}: fusioncube {stage}",
                     *(f"{k}={v}" for k, v in sorted(params.items()) if v is not None), f"(key {key})"])
    attrs.update(own)
    from tasks.provenance import environment

    attrs.update(created=now, software=f"fusioncube {code}", fusioncube_stage=stage, fusioncube_key=key,
                 fusioncube_params=_canonical(dict(params)), fusioncube_environment=_canonical(environment()),
                 history=f"{history}\n{line}" if history else line)
    return attrs


def stage_key(
    stage: str, *, inputs: Mapping[str, str], params: Mapping[str, Any], code: str
) -> str:
    """Hash of a stage's name, its inputs' keys, its parameters and its code version."""
    payload = _canonical({"stage": stage, "inputs": dict(inputs), "params": dict(params), "code": code})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def read_manifest(artifact: str | Path) -> Manifest | None:
    """The artifact's manifest, or None when there is none (not finished, or not ours)."""
    path = manifest_path(artifact)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        return Manifest(**{"environment": {}, **raw})  # written before environments were recorded: none
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: manifest is unreadable ({exc}); delete it to recompute the artifact"
        ) from exc


def _current_environment() -> dict[str, Any]:
    from tasks.provenance import environment

    return environment()


def write_manifest(artifact: str | Path, manifest: Manifest) -> Path:
    """Write the manifest atomically (temporary file + ``os.replace``)."""
    path = manifest_path(artifact)
    for leftover in path.parent.glob(f"{glob.escape(path.name)}{_TMP_MARK}*"):  # a killed write's temporary
        leftover.unlink(missing_ok=True)
    tmp = path.with_name(f"{path.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}")
    tmp.write_text(manifest.to_json())
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def reusable(artifact: str | Path, key: str) -> Manifest | None:
    """The manifest when ``artifact`` is finished with exactly this key, else None."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    if manifest is None or manifest.key != key or not artifact.exists():
        return None
    return manifest


#: what makes a folder a store fusioncube may replace without its manifest (a run killed between
#: renaming it into place and writing the manifest): a marker file -> the files such a store holds
#: beside its folders (Zarr v3 / v2, a compressed store); a file of any other name is not its
ARTIFACT_MARKERS: dict[str, frozenset[str]] = {
    "zarr.json": frozenset({"zarr.json"}),
    ".zgroup": frozenset({".zgroup", ".zattrs", ".zmetadata"}),
    ".zarray": frozenset({".zarray", ".zattrs"}),
    "codec.bin": frozenset({"codec.bin", "cores.bin", "finite.bin", "valid.bin", "segments.json", "index.zarr"}),
}


def not_replaceable(path: str | Path) -> str | None:
    """Why fusioncube must not delete what is at ``path`` to put an artifact there, or None when it
    may: nothing is there, or an artifact (a manifest beside it), a store (:data:`ARTIFACT_MARKERS`:
    an earlier run's product that lost its manifest to a kill, or a Zarr store the user chose to
    replace) or an empty folder. Anything else (a folder of documents, a file) is the user's."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    if manifest_path(path).exists():
        return None
    if path.is_dir() and not path.is_symlink():
        held = sorted(p.name for p in path.iterdir())
        files = {p.name for p in path.iterdir() if not p.is_dir() or p.name == "index.zarr"}
        if not held or any((path / marker).is_file() and files <= own for marker, own in ARTIFACT_MARKERS.items()):
            return None
        return (f"a folder that is not a fusioncube artifact (no {manifest_path(path).name} beside it, not a "
                f"Zarr store; it holds {', '.join(held[:3])}{' ...' if len(held) > 3 else ''})")
    return f"a {'symbolic link' if path.is_symlink() else 'file'} that is not a fusioncube artifact"


def refuse_overlap(out: str | Path, inputs: Sequence[str | Path]) -> None:
    """Refuse an output path that is one of the ``inputs``, holds one, or lies inside one (symbolic
    links resolved): replacing it would delete the input, or write into it."""
    target = Path(out).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source or source.is_relative_to(target) or target.is_relative_to(source):
            how = ("is" if target == source else "holds" if source.is_relative_to(target) else "lies inside")
            raise ValueError(f"{out}: the output {how} the input {given}; choose an output path outside it")


def reuse_or_refuse(artifact: str | Path, key: str, *, stage: str, overwrite: bool,
                    inputs: Sequence[str | Path] = ()) -> Manifest | None:
    """The stages' rule for an output path: the finished artifact with this ``key`` is reused
    (returned); another artifact there is refused unless ``overwrite``; else None (build it).
    An output that is, holds or lies inside one of the ``inputs`` (the stage's input paths) is
    refused, and so is anything there that fusioncube did not make (:func:`not_replaceable`), even
    with ``overwrite``.

    Raises
    ------
    ValueError
        When ``artifact`` overlaps an input.
    FileExistsError
        When ``artifact`` exists with another key and ``overwrite`` is False, or is not an artifact.
    """
    artifact = Path(artifact)
    refuse_overlap(artifact, inputs)
    found = reusable(artifact, key)
    if found is not None:
        log.info("%s: reused %s (key %s)", stage, artifact, key)
        return found
    why = not_replaceable(artifact)
    if why is not None:
        raise FileExistsError(f"{artifact} exists and is {why}: it is not replaced, even with --overwrite; "
                              "choose another output path, or move it away yourself")
    old = read_manifest(artifact) if artifact.exists() else None
    if artifact.exists() and not overwrite:
        raise FileExistsError(
            f"{artifact} exists but was not made from this input with these parameters and code "
            f"(its key {old.key if old else 'unknown: no manifest'}, this run's key {key}"
            f"{'; ' + _made_otherwise(old, inputs) if old else ''}); "
            "pass overwrite=True (--overwrite) to replace it, or choose another output path"
        )
    if old is not None:
        log.info("%s: replacing %s: %s", stage, artifact, _made_otherwise(old, inputs))
    return None


def _made_otherwise(old: Manifest, inputs: Sequence[str | Path]) -> str:
    """Why the artifact ``old`` describes is not this run's, as far as its manifest tells: another
    input (or another state of it), or the same input with other parameters or code."""
    try:
        now = {fingerprint(p) for p in inputs}
    except (OSError, CheckpointError):
        now = set()
    when = f"on {old.created[:10]} by fusioncube {old.code_version}"
    if now and now <= set(old.inputs.values()):
        return f"it was made from the same input {when}: its parameters or fusioncube's code differ"
    return f"it was made {when} from {'another input, or an earlier state of it' if now else 'its input then'}"


def torch_load_refusal(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words: torch's own message
    advises loading with ``weights_only=False``, which fusioncube never does (it can run code)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    words = " ".join(text.strip().split("\n\n")[0].split())
    reason = words.split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def save_checkpoint(path: str | Path, state: Mapping[str, Any], **meta: Any) -> Path:
    """``torch.save`` a model's weights with what rebuilds and describes it (``meta``: plain
    types, e.g. its kind, constructor arguments, classes, bands and input statistics), so the file
    alone is enough; written atomically and loadable with ``weights_only=True``
    (:func:`load_checkpoint`)."""
    import torch

    path = Path(path)
    tmp = path.with_name(f"{path.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}")
    torch.save({**meta, "state_dict": {k: v.detach().cpu() for k, v in state.items()}}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """A model checkpoint's state dict and metadata, loaded with ``torch.load(weights_only=True)``:
    a :func:`save_checkpoint` file, or a bare state dict (older files; metadata ``{}``).

    ``weights_only`` never unpickles arbitrary objects (no code runs from the file); the weights
    must then be a mapping of parameter names to tensors. Anything else is refused.

    Raises
    ------
    CheckpointError
        When the file holds no state dict (a pickled object, a bare tensor, a list...).
    """
    import pickle

    import torch

    path = Path(path)
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a plain state dict that loads with weights_only=True; refused, not unpickled "
            f"({torch_load_refusal(exc)})"
        ) from exc
    state, meta = saved, {}
    if isinstance(saved, Mapping) and isinstance(saved.get("state_dict"), Mapping):
        state, meta = saved["state_dict"], {k: v for k, v in saved.items() if k != "state_dict"}
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{path}: a model checkpoint must be a state dict (parameter name -> tensor); "
            f"got {type(state).__name__}; refused"
        )
    return dict(state), meta


def product_checkpoint(out: str | Path, suffix: str, kind: str, *, made_by: str, map_location: Any = "cpu",
                       ) -> tuple[dict[str, Any], dict[str, Any], Manifest | None]:
    """The model file a stage saved beside its product ``out`` (``out`` + ``suffix``; the file's own
    path is taken too): its state dict, its metadata, and, for a file saved before it held its
    settings (no ``config``), the product's manifest, which then rebuilds the model. A file of
    another ``kind`` of model, or such an old file without its manifest, is refused."""
    out = Path(out)
    if out.name.endswith(suffix):  # the weights file itself
        out = out.with_name(out.name.removesuffix(suffix))
    weights = out.with_name(out.name + suffix)
    state, meta = load_checkpoint(weights, map_location=map_location)
    if meta.get("kind", kind) != kind:
        raise ValueError(f"{weights}: holds a {meta['kind']} model, not the {kind} model {made_by} saves")
    manifest = None
    if "config" not in meta:
        manifest = read_manifest(out)
        if manifest is None:
            raise FileNotFoundError(f"{out}: no manifest beside weights saved without their settings; "
                                    f"run {made_by} again")
    return state, meta, manifest


def load_state_dict(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """The weights of a model checkpoint (:func:`load_checkpoint` without its metadata)."""
    return load_checkpoint(path, map_location=map_location)[0]


def fingerprint(artifact: str | Path) -> str:
    """Key of an input artifact: its manifest key, or for a foreign store a content fingerprint.

    Stores that fusioncube did not write (a user's own cube) have no manifest; their fingerprint
    hashes every file's relative path, size and modification time, so any change is seen.
    """
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    if manifest is not None:
        return manifest.key
    if not artifact.exists():
        raise FileNotFoundError(f"{artifact}: no such file or folder")
    digest = hashlib.sha256()
    files = [artifact] if artifact.is_file() else sorted(p for p in artifact.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        digest.update(f"{p.relative_to(artifact.parent)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return "fp-" + digest.hexdigest()[:20]


def remove_artifact(artifact: str | Path) -> None:
    """Remove an artifact and its manifest, the manifest first (a run stopped in between leaves
    a store without a manifest: not reused, made again)."""
    _remove(manifest_path(artifact))
    _remove(Path(artifact))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def clean_stale_temporaries(final: Path) -> None:
    """Remove temporaries a killed run left beside ``final``."""
    if not final.parent.exists():
        return
    manifest_tmp = f"{glob.escape(manifest_path(final).name)}{_TMP_MARK}*"
    for leftover in [*final.parent.glob(f"{glob.escape(final.name)}{_TMP_MARK}*"), *final.parent.glob(manifest_tmp)]:
        log.info("removing leftover of an interrupted run: %s", leftover)
        _remove(leftover)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` to ``final``, the artifact there (and its manifest) replaced."""
    if not tmp.exists():
        raise CheckpointError(f"{final}: the stage wrote nothing to {tmp}")
    old_manifest = manifest_path(final)
    if old_manifest.exists():
        old_manifest.unlink()
    if final.exists():
        graveyard = final.with_name(f"{final.name}{_TMP_MARK}old-{uuid.uuid4().hex[:8]}")
        os.replace(final, graveyard)
        os.replace(tmp, final)
        _remove(graveyard)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_artifact(final: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Build an artifact under a temporary name; rename it into place when the block succeeds.

    The manifest of any artifact already at ``final`` is removed before the swap, so at no point
    does a manifest describe content it does not match. On error the temporary is deleted and the
    artifact already at ``final`` (if any) is untouched.

    Parameters
    ----------
    final
        Where the artifact ends up.
    overwrite
        When False (the default) and ``final`` already exists, raise ``FileExistsError`` before
        any work; a stage passes True once :func:`reuse_or_refuse` has decided to replace it.
    """
    final = Path(final)
    why = not_replaceable(final)
    if why is not None:
        raise FileExistsError(f"{final} exists and is {why}: it is not replaced, even with --overwrite; "
                              "choose another output path, or move it away yourself")
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True (or --overwrite) to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(final)
    tmp = final.with_name(f"{final.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        _swap_into_place(tmp, final)
    except BaseException:
        _remove(tmp)
        # a write still in flight on zarr's I/O thread (the exception interrupted the wait for it,
        # as Ctrl-C or SIGTERM do) can land after that: the temporary is removed again at exit
        atexit.register(_remove, tmp)
        raise


@contextlib.contextmanager
def resumable_artifact(final: str | Path, key: str) -> Iterator[Path]:
    """Like :func:`atomic_artifact`, for long stages that record their progress as they go: the
    work folder is named by the run's ``key`` (``<final>.resume-<key>``) and is **kept** when the
    block fails (a crash, Ctrl-C, a kill), so the next run with the same key finds what the
    interrupted one finished there. What a run may resume from is the stage's own business: the
    folder does not exist yet, or holds what a stopped run left, possibly mid-write, when the
    block starts. On success it is renamed to ``final`` (the artifact there replaced).

    Work folders of other keys beside ``final`` (other parameters, input or code) are removed, as
    are :func:`atomic_artifact`'s temporaries. The work is locked while a run holds it
    (``<work>.lock``): a second run of the same stage into the same output fails at once with
    ``tasks.locks.CubeLockedError`` instead of writing into the first one's work.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(final)
    work = final.with_name(f"{final.name}{RESUME_MARK}{key}")
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(cube_lock(work, timeout=0))
        except CubeLockedError as exc:
            raise CubeLockedError(f"{final}: another run with the same input and parameters is writing it now; "
                                  f"this run changed nothing. Run again when that one is done ({exc})") from None
        found = final.parent.glob(f"{glob.escape(final.name)}{RESUME_MARK}*")
        lock_suffix = lock_path(work).name[len(work.name):]
        others = {p.with_name(p.name.removesuffix(lock_suffix)) for p in found} - {work}
        for other in sorted(others):
            try:  # its run's lock: a run still writing it is not robbed of its work
                held.enter_context(cube_lock(other, timeout=0))
            except CubeLockedError:
                if not work.exists():  # this run's own lock file, held: nothing of it is left behind
                    lock_path(work).unlink(missing_ok=True)
                raise CubeLockedError(f"{final}: another run (other input, parameters or code) is writing it now "
                                      f"in {other.name}; this run changed nothing. Run again when that one is "
                                      "done, or write elsewhere") from None
            log.info("removing the resumable work of another run of %s: %s", final.name, other)
            _remove(other)
            lock_path(other).unlink(missing_ok=True)  # held by this run: no one else is using it
        if work.exists():
            log.info("%s: resuming from %s", final.name, work)
        yield work
        _swap_into_place(work, final)
        lock_path(work).unlink(missing_ok=True)

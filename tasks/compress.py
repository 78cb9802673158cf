"""The compression stage: patches.zarr -> compressed/ (TDL bases + coded cores) -> decoded cube.

Bases are learned by Tensor Decomposition Learning (``fusion_models.tdl``; Aidini, Tsagkatakis and
Tsakalides, IEEE JSTSP 15(3), 2021) on the ``train`` split of a patches store; then EVERY patch is
compressed with the same codec as the benchmark's ``tdl``: ``G = X x_n D_n^T``, quantized with a
uniform step (``step`` in units of the training data's standard deviation, or ``bits``: a
``bits``-bit quantizer over the training cores' range), the indices chosen by rate-distortion
optimisation (``rdo_lambda``; :func:`fusion_models.tdl.rdo_quantize`) and rANS-coded with
context-adaptive Laplace models (``fusion_models.entropy``). ``compressed/`` holds everything a
decoder needs:

- ``codec.bin``: the bases as quantized Givens angles, the Laplace scale profiles, offset and scale
  (:meth:`fusion_models.tdl.TDLCodec.to_bytes`);
- ``cores.bin``: the coded cores (the step and the context model are in each stream's header);
- ``finite.bin`` / ``valid.bin``: the NaN mask of ``data`` (per patch, date and band) and the
  ``valid`` layer, coded losslessly by the context-adaptive binary coder;
- ``segments.json``: the patches are coded in segments of about ``SEGMENT_BYTES`` (one stream per
  segment in each ``.bin``; the table gives each segment's patch count and byte ranges), so encoder
  and decoder hold one segment at a time; the bases are fitted on at most ``TRAIN_BYTES`` of train
  patches;
- ``index.zarr``: the patches' coordinates (origins, time, band, grid): metadata, not counted in
  the codec's rate, like a file header's geo-referencing (counted in the stored rate); and the
  cube's static layers (land cover, ...),
  cut as the data is and stored losslessly, so the decoded cube has them too. They are not entries
  of the (time, band, y, x) tensor, so not in the rate either; the manifest gives their bytes
  (``outputs.static_layers``).

Missing values: an entry that is NaN in ``data`` is filled before coding
(``fusion_models.tdl.fill_missing``: the patch's mean at that date and band, or coarser means) and
put back as NaN at decoding from ``finite.bin``. Every finite entry is coded, observed or not.

Rate (bits per entry = per pixel per band per date) counts ``cores.bin``, both masks,
``codec.bin`` and the segment table, over the patches' entries (``stats.bits_per_entry``: the
codec's rate, as the benchmark measures it). What is shipped per value of the source cube is
``stats.bits_per_cube_entry``: every byte of ``compressed/`` (``index.zarr`` included, the static
layers not) over the cube's entries; patches that overlap or pad the cube make it the larger. Distortion is measured on the OBSERVED entries: the bands of
a pixel-date that is ``valid`` and has every band finite (``tasks.cube.observed_mask``, the pixels
:func:`observed_distortion` scores on the decoded cube), each patch's own (a pixel in two
overlapping patches counts twice). Cloud- or alpha-masked pixels keep their band values and are
coded, but neither scored nor allowed to set the peak: PSNR = 10 log10(peak^2 / MSE) with peak =
the range (max - min) of the observed values. This holds for the manifest's ``stats.psnr_db``,
``stats.nrmse``, ``stats.test``, ``stats.peak_range`` and for the ``psnr`` target
(:func:`step_for_psnr`), so ``psnr = 40`` gives about 40 dB on the decoded cube's observed pixels.
A cube with no observed entry at all is measured on its finite entries instead
(``stats.distortion_entries`` says which: ``"observed"`` or ``"finite"``).
``decoded.zarr`` is the decoded cube (``tasks.patch.unpatch``), with its manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import time as _time
import warnings
import zlib
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from tqdm.auto import tqdm

from fusion_models import tdl
from fusion_models.entropy import decode_mask, decode_mask_rows, encode_mask
from tasks.checkpoint import (
    Manifest,
    atomic_artifact,
    code_version,
    fingerprint,
    product_attrs,
    read_manifest,
    remove_artifact,
    reusable,
    reuse_or_refuse,
    stage_key,
    write_manifest,
)
from tasks.cube import compressed_store
from tasks.runlog import reports_warnings

__all__ = ["add_cli", "check_quantizer", "compress_cube", "compress_patches", "compress_task", "decompress", "default_ranks"]

log = logging.getLogger(__name__)

STAGE = "compress"
#: float32 bytes of patches coded as one segment (one rANS stream, one pair of mask streams): the
#: encoder's and decoder's working set
SEGMENT_BYTES = 64 * 1024**2
#: the bases are fitted on at most this many float32 bytes of train patches (a seeded sample)
TRAIN_BYTES = 128 * 1024**2
#: largest share of the training sample the ``psnr`` step search quantizes at each of its steps
SEARCH_BYTES = 16 * 1024**2
CODE_MODULES = ("tasks.compress",)  # and every project module it imports (checkpoint.code_modules)
# the masks' coding (index attribute compress_mask_coding): 2, fusion_models.entropy.encode_mask
# with the NaN mask anchored on valid; stores without the attribute were coded by encode_mask_rows
MASK_CODING = 2
#: the store's streams: segment table key -> file
STREAMS = {"cores": "cores.bin", "finite_mask": "finite.bin", "valid_mask": "valid.bin"}


def default_ranks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Ranks for ``(T, C, p, p)`` patches: full (``(T, C, p, p)``).

    With rate-distortion optimised quantization the coder itself drops what is not worth its bits,
    coefficient by coefficient, so truncating a mode only pays where the bases' side information
    dominates the rate (a small region at a very low rate); the compression benchmark sweeps both.
    """
    return tuple(int(n) for n in shape)


def _save_codec(path: Path, codec: tdl.TDLCodec) -> None:
    path.write_bytes(codec.to_bytes())


def _load_codec(path: Path) -> tdl.TDLCodec:
    return tdl.TDLCodec.from_bytes(path.read_bytes())


def _frames(mask: np.ndarray) -> np.ndarray:
    """``(P, ..., p, p)`` -> ``(frames, p, p)``."""
    return mask.reshape(-1, *mask.shape[-2:])


def _observed(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The observed entries of patches ``data (P, T, C, p, p)`` with ``valid (P, T, p, p)``: the
    bands of a valid pixel-date with every band finite (``tasks.cube.observed_mask``), ``data``'s shape."""
    from tasks.cube import observed_mask

    g, t, c = data.shape[:3]
    seen = observed_mask(data.reshape(g * t, c, *data.shape[3:]), valid.reshape(g * t, *valid.shape[2:]))
    return np.broadcast_to(seen.reshape(g, t, 1, *seen.shape[1:]), data.shape)


def check_quantizer(*, step: float | None = None, bits: int | None = None, psnr: float | None = None,
                    rdo_lambda: float = tdl.RDO_LAMBDA, iters: int = 10, **_: Any) -> None:
    """Refuse quantizer (and ADMM iteration) settings that cannot work (before any store is written)."""
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1 (ADMM iterations); got iters={iters!r}")
    given = {k: v for k, v in (("step", step), ("bits", bits), ("psnr", psnr)) if v is not None}
    if len(given) > 1:
        raise ValueError(f"give one of step, bits and psnr; got {', '.join(f'{k}={v!r}' for k, v in given.items())}")
    if psnr is not None and not (np.isfinite(psnr) and psnr > 0):
        raise ValueError(f"psnr must be a finite target in dB, > 0; got psnr={psnr!r}")
    if step is not None and not (np.isfinite(step) and step > 0):
        raise ValueError(f"step must be finite and > 0; got step={step!r}")
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 24):
        raise ValueError(f"bits must be an integer in 1..24; got bits={bits!r}")
    if not (np.isfinite(rdo_lambda) and rdo_lambda >= 0):
        raise ValueError(f"rdo_lambda must be finite and >= 0 (squared steps per bit); got {rdo_lambda!r}")


def step_for_psnr(codec: tdl.TDLCodec, data: np.ndarray, psnr: float, *, peak: float | None = None,
                  observed: np.ndarray | None = None, rdo_lambda: float = tdl.RDO_LAMBDA,
                  deadzone: float = 0.2, iters: int = 11) -> tuple[float, float]:
    """The coarsest quantizer step (data std units) whose decoding of ``data`` (patches, NaN where
    missing) reaches ``psnr`` dB over its ``observed`` entries (a mask of ``data``'s shape, the
    stage's :func:`_observed`; default: the finite entries): bisection on the log of the step, the
    quantizer and coder as the stage runs them. ``peak``: the PSNR's peak, the range of the whole
    cube's observed values as the manifest measures it (default: the range of ``data``'s measured
    entries). Returns the step and the PSNR it reaches. Raises ``ValueError`` when even a fine
    step misses the target (the ranks truncate more than it allows)."""
    finite = np.isfinite(data)
    scored = finite if observed is None else finite & observed
    if not scored.any():
        raise ValueError("no observed entry to measure a PSNR on")
    values = data[scored].astype(np.float64)
    peak = (float(values.max() - values.min()) if peak is None else float(peak)) or 1.0
    filled = tdl.fill_missing(data, finite)

    def reached(step: float) -> float:
        q = tdl.quantize_core(codec, filled, step, lam=rdo_lambda, deadzone=deadzone)
        err = tdl.dequantize_core(codec, q, step).reshape(data.shape)[scored] - values
        mse = float(np.mean(err**2))
        return 10 * np.log10(peak**2 / mse) if mse > 0 else float("inf")

    fine, coarse = 1e-3, 8.0  # steps in std units: far finer / coarser than any useful setting
    best = reached(fine)
    if best < psnr:
        raise ValueError(f"a PSNR of {psnr:g} dB is out of reach with ranks {list(codec.ranks)}: even a fine "
                         f"quantizer gives {best:.2f} dB on the training patches; raise --ranks (full ranks "
                         "lose nothing but quantization)")
    at_coarse = reached(coarse)
    if at_coarse >= psnr:
        return coarse, at_coarse
    for _ in range(iters):  # invariant: reached(fine) >= psnr > reached(coarse)
        mid = float(np.sqrt(fine * coarse))
        got = reached(mid)
        if got >= psnr:
            fine, best = mid, got
        else:
            coarse = mid
    return fine, best


def compress_patches(
    patches: str | Path,
    out: str | Path,
    *,
    ranks: tuple[int, ...] | None = None,
    step: float | None = None,
    bits: int | None = None,
    psnr: float | None = None,
    iters: int = 10,
    rdo_lambda: float = tdl.RDO_LAMBDA,
    deadzone: float = 0.2,
    overwrite: bool = False,
    progress: bool = False,
) -> Manifest:
    """Fit TDL bases on the train split of ``patches`` and compress every patch into ``out``.

    Parameters
    ----------
    patches
        A store written by ``tasks.patch.make_patches``.
    out
        The ``compressed/`` folder to write (its manifest beside it).
    ranks
        ``(R_time, R_band, R_py, R_px)`` (default :func:`default_ranks`).
    step, bits, psnr
        The quantizer: ``step`` in units of the training data's standard deviation, ``bits`` for
        a symmetric ``bits``-bit quantizer over the training cores' largest magnitude, or ``psnr``
        (dB) for the coarsest step that reaches that PSNR over the training patches' observed
        entries, peak = the range of the whole cube's observed values (:func:`step_for_psnr`; the
        whole cube's PSNR is then close to it). At most one may be given; default ``step = 0.5``.
    iters
        ADMM iterations of :func:`fusion_models.tdl.tdl_fit`.
    rdo_lambda
        Lagrange multiplier of the rate-distortion optimised quantization, in squared steps per bit
        (default ``ln 2 / 6``, the high-rate slope); 0 for the plain dead-zone quantizer.
    deadzone
        Dead zone of the quantizer when ``rdo_lambda = 0`` (share of the step, ``[0, 0.5)``).
    overwrite
        Replace an ``out`` made with another key.
    progress
        Show progress bars over the segments (coding, then decoding).

    Returns
    -------
    Manifest
        ``stats`` holds ``bits_per_entry`` (the codec's streams and tables over the coded patch
        entries, ``coded_entries``: the rate the benchmark compares), its parts,
        ``stored_bytes`` and ``bits_per_cube_entry`` (the whole store, index included and static
        layers not, over the source cube's entries: what a user ships per value), ``psnr_db``
        and ``nrmse`` over the observed entries (valid pixel-dates, every band finite; the module
        docstring), their range ``peak_range`` (the PSNR's peak), ``distortion_entries``
        (``"observed"``, or ``"finite"`` for a cube with no observed entry) and ``test``: the
        same on the test split.
    """
    check_quantizer(step=step, bits=bits, psnr=psnr, rdo_lambda=rdo_lambda, iters=iters)
    patches, out = Path(patches), Path(out)
    pds = xr.open_zarr(patches, consolidated=None)
    if "data" not in pds or "split" not in pds.coords:
        raise ValueError(f"{patches}: not a patches store (needs data and split); run make_patches first")
    shape = tuple(int(n) for n in pds["data"].shape[1:])
    ranks = default_ranks(shape) if ranks is None else tuple(int(r) for r in ranks)
    params = {"ranks": list(ranks), "step": step, "bits": bits, "iters": iters,
              "rdo_lambda": rdo_lambda, "deadzone": deadzone, **({"psnr": psnr} if psnr is not None else {})}
    inputs = {"patches": fingerprint(patches)}
    key = stage_key(STAGE, inputs=inputs, params=params, code=code_version(*CODE_MODULES))
    found = reuse_or_refuse(out, key, stage=STAGE, overwrite=overwrite, inputs=[patches])
    if found is not None:
        return found

    started = _time.perf_counter()
    n = int(pds.sizes["patch"])
    split = np.array([str(s) for s in pds["split"].values])
    per_patch = 4 * int(np.prod(shape))  # float32 bytes of one patch
    # the bases are fitted on a bounded sample of the train split (all of it on cubes up to
    # TRAIN_BYTES), then the patches are coded segment by segment: memory does not grow with the cube
    train_idx = np.flatnonzero(split == "train")
    if len(train_idx) == 0:
        log.warning("compress: %s has no train patch; fitting the bases on all patches", patches)
        train_idx = np.arange(n)
    cap = max(1, TRAIN_BYTES // per_patch)
    if len(train_idx) > cap:
        log.info("compress: fitting the bases on %d of %d train patches", cap, len(train_idx))
        train_idx = np.sort(np.random.default_rng(0).choice(train_idx, cap, replace=False))
    sample = pds["data"].isel(patch=train_idx).values.astype(np.float32)
    train = tdl.fill_missing(sample, np.isfinite(sample))
    with tqdm(total=iters, desc=f"compress {patches.name}: learn the bases on {len(train)} patches",
              unit="iteration", disable=not progress) as bar:  # at most iters: ADMM may stop early
        codec, res = tdl.fit_codec(train, ranks, iters=iters, callback=lambda *_: bar.update())
        bar.total = bar.n  # converged early: the bar ends full
    if psnr is not None:  # the manifest's peak: the range of the observed values (one streamed pass)
        seen = pds["valid"].astype(bool) & pds["data"].notnull().all("band")
        obs = pds["data"].where(seen)
        lo, hi, flo, fhi = (float(v) for v in dask.compute(  # one read: observed, then finite range
            obs.min(skipna=True), obs.max(skipna=True), pds["data"].min(skipna=True), pds["data"].max(skipna=True)))
        observed_any = bool(np.isfinite(lo))  # else (nothing observed) the finite entries are measured
        peak = hi - lo if observed_any else fhi - flo
        cap = max(1, SEARCH_BYTES // per_patch)  # the search quantizes a bounded share of the sample
        pick = (np.arange(len(sample)) if len(sample) <= cap
                else np.sort(np.random.default_rng(1).choice(len(sample), cap, replace=False)))
        search = sample[pick]
        search_seen = _observed(search, pds["valid"].isel(patch=train_idx[pick]).values.astype(bool))
        if observed_any and not search_seen.any():
            log.warning("compress: the training patches searched have no observed entry; the psnr step "
                        "is searched on their finite entries")
        step, reached = step_for_psnr(codec, search, psnr, peak=peak,
                                      observed=search_seen if search_seen.any() else None,
                                      rdo_lambda=rdo_lambda, deadzone=deadzone)
        log.info("compress: step %.4g reaches %.2f dB on the training patches (target %g dB)", step, reached, psnr)
    del sample
    if bits is not None:
        import torch

        cores = tdl.project(torch.from_numpy((train - np.float32(codec.offset)) / np.float32(codec.scale)),
                            [torch.from_numpy(b) for b in codec.bases])
        step = tdl.step_for_bits(cores, bits)
        del cores
    del train
    step = 0.5 if step is None else float(step)

    group = max(1, SEGMENT_BYTES // per_patch)
    test = split == "test"
    entries = 0
    # distortion over the observed entries; the same over the finite ones for a cube without any
    ranges = {kind: [np.inf, -np.inf] for kind in ("observed", "finite")}
    sums = {(kind, name): {"sse": 0.0, "energy": 0.0, "count": 0}
            for kind in ("observed", "finite") for name in ("all", "test")}
    table: list[dict[str, Any]] = []
    nbytes = {"cores": 0, "finite_mask": 0, "valid_mask": 0}
    encode_s = 0.0
    with atomic_artifact(out, overwrite=True) as tmp:
        tmp.mkdir(parents=True)
        _save_codec(tmp / "codec.bin", codec)
        with (open(tmp / "cores.bin", "wb") as cores_f, open(tmp / "finite.bin", "wb") as finite_f,
              open(tmp / "valid.bin", "wb") as valid_f):
            for first in tqdm(range(0, n, group), desc=f"compress {patches.name}", unit="segment",
                              disable=not progress):
                sel = slice(first, min(n, first + group))
                data = pds["data"][sel].values.astype(np.float32)  # (g, T, C, p, p)
                valid = pds["valid"][sel].values.astype(bool)  # (g, T, p, p)
                finite = np.isfinite(data)
                t0 = _time.perf_counter()
                q = tdl.quantize_core(codec, tdl.fill_missing(data, finite), step, lam=rdo_lambda,
                                      deadzone=deadzone)
                stream = tdl.encode_indices(codec, q, step)
                period = finite[0].size // valid[0].size  # the bands of a date
                finite_bits = encode_mask(_frames(finite), anchors=_frames(valid), period=period)
                valid_bits = encode_mask(_frames(valid))
                encode_s += _time.perf_counter() - t0
                row: dict[str, int | list[int]] = {"patches": len(data)}
                for name, blob, f in (("cores", stream, cores_f), ("finite_mask", finite_bits, finite_f),
                                      ("valid_mask", valid_bits, valid_f)):
                    row[name] = [nbytes[name], len(blob), zlib.crc32(blob)]  # offset, size, checksum
                    f.write(blob)
                    nbytes[name] += len(blob)
                table.append(row)
                decoded = tdl.dequantize_core(codec, q, step).reshape(data.shape)  # = decoding the stream
                entries += data.size
                for kind, mask in (("observed", _observed(data, valid)), ("finite", finite)):
                    if not mask.any():
                        continue
                    vals = data[mask]
                    ranges[kind] = [min(ranges[kind][0], float(vals.min())), max(ranges[kind][1], float(vals.max()))]
                    for name, keep in (("all", np.ones(len(data), bool)), ("test", test[sel])):
                        m = mask & keep.reshape(-1, *([1] * (data.ndim - 1)))
                        err = decoded[m].astype(np.float64) - data[m]
                        sums[kind, name]["sse"] += float(np.sum(err**2))
                        sums[kind, name]["energy"] += float(np.sum(data[m].astype(np.float64) ** 2))
                        sums[kind, name]["count"] += int(err.size)
        (tmp / "segments.json").write_text(json.dumps(table))
        # static layers (land cover, ...) go along losslessly, cut as the data is, so the decoded
        # cube is a cube like its source; they are not entries of the 4D tensor, so not in the rate
        index = pds.drop_vars(["data", "valid"])
        index.attrs.update(compress_shape=[n, *shape], compress_valid_shape=[n, *pds["valid"].shape[1:]],
                           compress_mask_coding=MASK_CODING)
        index.to_zarr(tmp / "index.zarr", mode="w", zarr_format=3, consolidated=True)
        static = {str(v): _tree_bytes(tmp / "index.zarr" / str(v)) for v in index.data_vars}  # bytes stored
        stored = _tree_bytes(tmp) - sum(static.values())  # what is shipped for the data, index included
    parts = {"cores": 8 * nbytes["cores"], "codec": codec.side_bits(),
             "finite_mask": 8 * nbytes["finite_mask"], "valid_mask": 8 * nbytes["valid_mask"],
             "segments": 8 * len(json.dumps(table))}
    # the source cube's entries (patches overlap or pad it): the rate a user ships per cube value
    cube_entries = int(np.prod(pds.attrs["cube_shape"])) if "cube_shape" in pds.attrs else 0
    kind = "observed" if sums["observed", "all"]["count"] else "finite"
    lo, hi = ranges[kind]
    peak = hi - lo if hi > lo else 1.0

    def scores(name: str) -> dict[str, float | None]:
        t = sums[kind, name]
        if not t["count"]:  # e.g. a cube too small for a test split
            return {"psnr_db": None, "nrmse": None}
        mse = t["sse"] / t["count"]
        return {"psnr_db": float(10 * np.log10(peak**2 / mse)) if mse > 0 else float("inf"),
                "nrmse": float(np.sqrt(t["sse"]) / max(np.sqrt(t["energy"]), 1e-30))}

    manifest = Manifest(
        stage=STAGE, key=key, params=params, inputs=inputs, code_version=code_version(*CODE_MODULES),
        outputs={"path": str(out), "patches": str(patches), "ranks": list(ranks), "step": step,
                 "shape": [n, *shape], "segments": len(table), "static_layers": static},
        stats={
            "bits_per_entry": sum(parts.values()) / entries,
            "bits_per_entry_parts": {k: v / entries for k, v in parts.items()},
            "coded_entries": entries,
            "stored_bytes": stored,
            **({"bits_per_cube_entry": 8 * stored / cube_entries} if cube_entries else {}),
            "peak_range": peak, **scores("all"),
            "test": scores("test"),
            "distortion_entries": kind,
            "tdl_iterations": res.iterations,
            "training_patches": len(train_idx),
            "encode_mb_s": entries * 4 / 1e6 / max(encode_s, 1e-9),
            "seconds": round(_time.perf_counter() - started, 3),
        },
    )
    write_manifest(out, manifest)
    log.info("compress: %s at %.3f bits per entry, PSNR %.2f dB", out,
             manifest.stats["bits_per_entry"], manifest.stats["psnr_db"])
    return manifest


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _segments(compressed: Path, n: int) -> list[dict[str, Any]]:
    """The segment table (``segments.json``); a store of one stream per file is one segment."""
    path = compressed / "segments.json"
    if path.exists():
        return list(json.loads(path.read_text()))
    sizes = {name: (compressed / f).stat().st_size for name, f in STREAMS.items()}
    return [{"patches": n, **{name: [0, size] for name, size in sizes.items()}}]


def _decoded_segments(compressed: Path) -> Any:
    """``(first patch, data (g, T, C, p, p) float32 NaN where the data was NaN, valid (g, T, p, p))``
    per segment, decoded one at a time."""
    codec = _load_codec(compressed / "codec.bin")
    index = xr.open_zarr(compressed / "index.zarr", consolidated=None)
    shape = tuple(int(v) for v in index.attrs["compress_shape"])
    vshape = tuple(int(v) for v in index.attrs["compress_valid_shape"])
    blobs = {name: compressed / f for name, f in STREAMS.items()}
    first = 0
    for seg in _segments(compressed, shape[0]):
        g = int(seg["patches"])

        def part(name: str, seg: dict[str, Any] = seg) -> bytes:
            offset, size, *crc = seg[name]  # stores before checksums: offset, size
            with open(blobs[name], "rb") as f:
                f.seek(offset)
                blob = f.read(size)
            if len(blob) != size:
                raise ValueError(f"{blobs[name]}: truncated: a segment needs bytes {offset}..{offset + size}, "
                                 f"the file has {blobs[name].stat().st_size}")
            if crc and zlib.crc32(blob) != crc[0]:
                raise ValueError(f"{blobs[name]}: damaged: bytes {offset}..{offset + size} fail their checksum")
            return blob

        frames = (g * int(np.prod(shape[1:-2])), *shape[-2:])
        valid_frames = (g * int(np.prod(vshape[1:-2])), *vshape[-2:])
        cores, valid_bits, finite_bits = part("cores"), part("valid_mask"), part("finite_mask")

        def decoded(file: str, decode: Any, *args: Any, first: int = first, **kw: Any) -> Any:
            try:
                return decode(*args, **kw)
            except ValueError as e:  # a stream that passed its checksum (or had none) and still fails
                raise ValueError(f"{compressed / file}: cannot decode the segment from patch {first} ({e}); "
                                 "the store is damaged") from e

        x = decoded("cores.bin", tdl.decode, codec, cores, g).reshape(g, *shape[1:])
        if index.attrs.get("compress_mask_coding") == MASK_CODING:
            valid = decoded("valid.bin", decode_mask, valid_bits, valid_frames)
            finite = decoded("finite.bin", decode_mask, finite_bits, frames, anchors=valid,
                             period=frames[0] // valid_frames[0])
        else:  # a store written before (no compress_mask_coding): each mask on its own, row by row
            valid = decoded("valid.bin", decode_mask_rows, valid_bits, valid_frames)
            finite = decoded("finite.bin", decode_mask_rows, finite_bits, frames)
        yield (first, np.where(finite.reshape(x.shape), x, np.nan).astype(np.float32),
               valid.reshape(g, *vshape[1:]))
        first += g


def decompress(compressed: str | Path, out: str | Path, *, overwrite: bool = False,
               progress: bool = False) -> xr.Dataset:
    """Decode ``compressed/`` back into a cube (``data`` and ``valid``) at ``out`` (Zarr v3)."""
    from tasks.cube import open_cube, zarr_array
    from tasks.patch import unpatch

    compressed, out = Path(compressed), Path(out)
    if not compressed.exists():
        raise FileNotFoundError(f"{compressed}: no such compressed store (stage compress writes it as "
                                "OUT/compressed)")
    if not (compressed / "cores.bin").exists():
        raise FileNotFoundError(f"{compressed}: no cores.bin; not a compressed store of this stage")
    missing = [f for f in ("codec.bin", "finite.bin", "valid.bin", "index.zarr") if not (compressed / f).exists()]
    if missing:
        raise FileNotFoundError(f"{compressed}: {', '.join(missing)} missing; the store is incomplete")
    if out.exists() and not overwrite:  # before any decoding
        raise FileExistsError(f"{out} exists; pass overwrite=True (or --overwrite) to replace it")
    import dask.array as dask_array
    import zarr

    # the index's coordinates (origins, split, ...) loaded: with compute=False below, lazy ones
    # would be left unwritten
    index = xr.open_zarr(compressed / "index.zarr", consolidated=None).load()
    shape = tuple(int(v) for v in index.attrs["compress_shape"])
    vshape = tuple(int(v) for v in index.attrs["compress_valid_shape"])
    segments = _segments(compressed, shape[0])
    chunk = max(1, int(segments[0]["patches"]))  # segments: equal but the last
    mapping = {"grid_mapping": "spatial_ref"} if "spatial_ref" in index.variables else {}
    ds = index.assign(
        data=(("patch", "time", "band", "py", "px"),
              dask_array.zeros(shape, dtype=np.float32, chunks=(chunk, *shape[1:])),
              {"long_name": "values decoded from a lossy compression (TDL)", **mapping}),
        valid=(("patch", "time", "py", "px"), dask_array.zeros(vshape, dtype=bool, chunks=(chunk, *vshape[1:])),
               {"long_name": "pixel observed (clear) in the source cube", **mapping}),
    )
    for k in ("compress_shape", "compress_valid_shape", "compress_mask_coding"):
        ds.attrs.pop(k, None)
    ds.attrs["compression"] = f"decoded from {compressed.resolve()}: lossy, see its manifest for the rate and PSNR"
    tmp = out.with_name(out.name + ".patches-tmp.zarr")
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # segment by segment into a patches store, then folded window by window: bounded memory
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True, compute=False)
        group = zarr.open_group(str(tmp), mode="r+")
        for first, data, valid in tqdm(_decoded_segments(compressed), total=len(segments),
                                       desc=f"decode {compressed.name}", unit="segment", disable=not progress):
            zarr_array(group, "data")[first:first + len(data)] = data
            zarr_array(group, "valid")[first:first + len(valid)] = valid
        unpatch(tmp, out, overwrite=overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # made from the compressed store, not from the temporary patches it was decoded through
    folded = read_manifest(out)
    if folded is not None:
        inputs = {"compressed": fingerprint(compressed)}
        outputs = {k: v for k, v in folded.outputs.items() if k != "patches"}
        key = stage_key("decompress", inputs=inputs, params=folded.params, code=folded.code_version)
        # the store says so too: the fold through patches stamped it as an unpatch of a temporary
        group = zarr.open_group(str(out), mode="r+", use_consolidated=False)
        attrs = dict(group.attrs)
        attrs["history"] = "\n".join(str(attrs.get("history", "")).splitlines()[:-1])
        group.attrs.put(product_attrs("decompress", key, {**folded.params, "compressed": str(compressed.resolve())},
                                      code=folded.code_version, inherit=attrs))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            zarr.consolidate_metadata(str(out))
        write_manifest(out, replace(folded, stage="decompress", inputs=inputs, key=key,
                                    outputs={**outputs, "compressed": str(compressed)}))
    return open_cube(out)


def compress_png(cube: str | Path, decoded: str | Path, out: str | Path, *, title: str = "",
                 max_pixels: int = 768) -> Path:
    """Quick-look of a compression: the date with the most valid pixels, original | decoded | the
    absolute error, each subsampled to at most ``max_pixels`` a side. True colour when the cube
    has red/green/blue bands (the same stretch for original and decoded), else the first band."""
    from tasks.cube import open_cube
    from tasks.quicklook import plt, rgb_bands, save_figure

    src, dec = open_cube(cube), open_cube(decoded)
    t = int(src["valid"].sum(dim=("y", "x")).argmax("time"))
    step = max(1, int(np.ceil(max(src.sizes["y"], src.sizes["x"]) / max_pixels)))
    window = {"time": t, "y": slice(None, None, step), "x": slice(None, None, step)}
    a = src["data"].isel(window).values.astype(np.float32)  # (band, y, x)
    b = dec["data"].isel(window).values.astype(np.float32)
    bands = [str(v) for v in src["band"].values]
    rgb = rgb_bands(bands)
    show = [bands.index(c) for c in rgb] if rgb else [0]
    finite = np.isfinite(a[show]).all(axis=0)
    sample = a[show][:, finite]
    lo, hi = (np.percentile(sample, [2, 98]) if sample.size else (0.0, 1.0))
    scale = hi - lo if hi > lo else 1.0

    def image(x: np.ndarray) -> np.ndarray:
        img = np.clip((x[show] - lo) / scale, 0, 1)
        img = np.moveaxis(img, 0, -1) if rgb else img[0]
        img = np.where(np.isfinite(img), img, 0.8)
        return img

    err = np.abs(b - a)[show].mean(axis=0)
    ny, nx = err.shape
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2 * float(np.clip(ny / max(nx, 1), 0.4, 1.4)) + 1.0), dpi=100,
                             layout="constrained")
    date = np.datetime_as_string(src["time"].values[t], unit="D")
    for ax, img, name in zip(axes[:2], (image(a), image(b)), ("original", "decoded"), strict=True):
        shown = ax.imshow(img, cmap=None if rgb else "viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{name}, {date}", fontsize=9)
    if not rgb:  # one band: the values' scale, shared by original and decoded
        bar = fig.colorbar(shown, ax=axes[:2].tolist(), shrink=0.8, label=bands[0])
        ticks = [0.0, 0.25, 0.5, 0.75, 1.0]  # the stretched 0..1 shown as the values they stand for
        bar.set_ticks(ticks, labels=[f"{lo + v * scale:.3g}" for v in ticks])
    vmax = float(np.nanpercentile(err, 99)) if np.isfinite(err).any() else 1.0
    im = axes[2].imshow(err, cmap="magma", vmin=0, vmax=vmax or 1.0, interpolation="nearest")
    axes[2].set_title("|decoded - original|" + (" (mean of R, G, B)" if rgb else f" ({bands[0]})"), fontsize=9)
    fig.colorbar(im, ax=axes[2], shrink=0.8, label="absolute error, the band's units")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title or f"{Path(cube).name}: TDL compression", fontsize=10)
    out = Path(out)
    return save_figure(fig, out)


def observed_distortion(cube: str | Path, decoded: str | Path) -> dict[str, float | int | None]:
    """PSNR and NRMSE of the ``decoded`` cube against ``cube`` over the cube's observed pixels
    (valid, every band finite; read one time chunk at a time): the quality a user of the decoded cube
    gets. The stage's own figures are over the patches' finite entries (cloudy ones included,
    overlapping patches counted twice); this is the map's. Peak: the observed values' range."""
    from tasks.cube import observed_mask, open_cube

    a, b = open_cube(cube), open_cube(decoded)
    sse = energy = 0.0
    count, lo, hi = 0, np.inf, -np.inf
    step = a["data"].data.chunksize[0]  # the cube's time chunk: each chunk read once
    for t0 in range(0, a.sizes["time"], step):
        dates = slice(t0, t0 + step)
        x = np.asarray(a["data"][dates].values, np.float64)
        seen = np.broadcast_to(observed_mask(x, np.asarray(a["valid"][dates].values, bool))[:, None], x.shape)
        if not seen.any():
            continue
        ref, got = x[seen], np.asarray(b["data"][dates].values, np.float64)[seen]
        sse += float(np.sum((got - ref) ** 2))
        energy += float(np.sum(ref**2))
        count += ref.size
        lo, hi = min(lo, float(ref.min())), max(hi, float(ref.max()))
    if not count:
        return {"psnr_db": None, "nrmse": None, "entries": 0}
    mse = sse / count
    peak = hi - lo if hi > lo else 1.0
    return {"psnr_db": float(10 * np.log10(peak**2 / mse)) if mse > 0 else float("inf"),
            "nrmse": float(np.sqrt(sse) / max(np.sqrt(energy), 1e-30)), "entries": count}


#: what the compress stage writes into its output folder (with their manifests, locks and temporaries)
OUT_DIR_ENTRIES = ("patches.zarr", "compressed", "decoded.zarr", "compress.png", "decoded_quality.json")
#: the leftovers of those: manifests, temporaries of a killed run, resumable work, locks
_OWN_SUFFIX = re.compile(r"^(\.manifest\.json)?(\.tmp-.*|\.resume-.*|\.lock|\.partial)?$")


def _check_out_dir(out_dir: Path, cube: str | Path) -> None:
    """Refuse, before any work, an output folder that is, holds or lies in the cube, or that is not
    the stage's own: a folder with anything but :data:`OUT_DIR_ENTRIES` (and their manifests and
    leftovers), or one whose entries no manifest of the stage vouches for (``--out .`` must not
    replace a ``decoded.zarr`` or a ``compress.png`` of the user's), or whose stores fusioncube
    did not make."""
    from tasks.checkpoint import manifest_path, not_replaceable, refuse_overlap

    refuse_overlap(out_dir, [cube])
    if not out_dir.is_dir():
        if out_dir.exists():
            raise FileExistsError(f"{out_dir}: the compress stage writes a folder there; it is a file")
        return
    names = sorted(p.name for p in out_dir.iterdir())
    other = [n for n in names if not any(n.startswith(e) and _OWN_SUFFIX.match(n[len(e):]) for e in OUT_DIR_ENTRIES)]
    if not any(manifest_path(out_dir / e).exists() for e in ("compressed", "patches.zarr", "decoded.zarr")):
        other += [n for n in ("compress.png", "decoded_quality.json") if n in names]  # no run of the stage wrote them
    other += [n for n in ("patches.zarr", "compressed", "decoded.zarr") if not_replaceable(out_dir / n)]
    if other:
        raise FileExistsError(
            f"{out_dir} holds {', '.join(other[:3])}{' ...' if len(other) > 3 else ''}, which the compress stage did "
            f"not write; it writes {', '.join(OUT_DIR_ENTRIES)} into a folder of its own: give a new or empty one")


def compress_cube(
    cube: str | Path,
    out_dir: str | Path,
    *,
    patch: int = 32,
    overwrite: bool = False,
    progress: bool = False,
    patches: str | Path | None = None,
    **kwargs: Any,
) -> Manifest:
    """Any schema-following cube -> ``out_dir/patches.zarr`` -> ``out_dir/compressed`` ->
    ``out_dir/decoded.zarr``. ``kwargs`` go to :func:`compress_patches`.

    ``patches``: a patch store of ``cube`` made elsewhere (the pipeline's ``patches.zarr``), coded
    instead of cutting the same patches again into ``out_dir/patches.zarr`` when it holds exactly
    them (its key is :func:`tasks.patch.default_patch_key` of the cube at this patch size); a copy
    an earlier run cut into ``out_dir`` is then removed. Otherwise the stage cuts its own."""
    from tasks.patch import default_patch_key, fit_patch_size, make_patches

    check_quantizer(**kwargs)  # before the patch store is written
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, cube)
    size, _ = fit_patch_size(cube, patch, None)
    own = out_dir / "patches.zarr"
    if patches is not None and Path(patches) != own and reusable(patches, default_patch_key(cube, size)):
        source = Path(patches)
        remove_artifact(own)  # a copy of the same patches an earlier run cut: twice the storage
    else:
        source = own
        make_patches(cube, own, size=size, overwrite=overwrite, progress=progress)
    manifest = compress_patches(source, out_dir / "compressed", overwrite=overwrite, progress=progress, **kwargs)
    if manifest.outputs.get("patches") != str(source):  # reused, coded from the same patches kept elsewhere
        manifest = replace(manifest, outputs={**manifest.outputs, "patches": str(source)})
        write_manifest(out_dir / "compressed", manifest)
    decoded = out_dir / "decoded.zarr"
    decompress(out_dir / "compressed", decoded, overwrite=True, progress=progress)
    s = manifest.stats
    seen = observed_distortion(cube, decoded)
    part = out_dir / "decoded_quality.json.partial"
    part.write_text(json.dumps(seen))
    os.replace(part, out_dir / "decoded_quality.json")
    compress_png(cube, decoded, out_dir / "compress.png",
                 title=f"{Path(cube).name}: TDL at {s['bits_per_entry']:.3f} bits per entry, "
                       f"PSNR {s['psnr_db']:.2f} dB on observed pixels (peak = their range)")
    return manifest


def decoded_quality(out_dir: str | Path) -> dict[str, Any]:
    """:func:`observed_distortion` of the stage's decoded cube, as :func:`compress_cube` saved it
    (``{}`` for an output folder written before it did)."""
    path = Path(out_dir) / "decoded_quality.json"
    return json.loads(path.read_text()) if path.exists() else {}


@task(name="compress", retries=1, retry_delay_seconds=10, cache_policy=NONE)
@reports_warnings
def compress_task(cube: str, out_dir: str, *, patch: int = 32, ranks: list[int] | None = None,
                  step: float | None = None, bits: int | None = None, psnr: float | None = None, iters: int = 10,
                  rdo_lambda: float = tdl.RDO_LAMBDA, overwrite: bool = False,
                  patches: str | None = None) -> dict[str, Any]:
    """Prefect task: :func:`compress_cube`, then a table artifact of rate and distortion. ``patches``:
    the pipeline's patch store, coded when it holds the patches the stage would cut."""
    from prefect.artifacts import create_table_artifact

    from tasks.quicklook import made_in_task_run, product_key, publish_image

    logger = get_run_logger()
    manifest = compress_cube(cube, out_dir, patch=patch, overwrite=overwrite,
                             ranks=tuple(ranks) if ranks else None, step=step, bits=bits, psnr=psnr,
                             iters=iters, rdo_lambda=rdo_lambda,
                             patches=patches)
    s = manifest.stats
    seen = decoded_quality(out_dir)
    create_table_artifact(
        table=[{"bits_per_entry": round(s["bits_per_entry"], 4), "psnr_db": round(s["psnr_db"], 2),
                "nrmse": round(s["nrmse"], 4), "test_psnr_db": None if s["test"]["psnr_db"] is None else round(s["test"]["psnr_db"], 2),
                "decoded_observed_psnr_db": None if seen.get("psnr_db") is None else round(seen["psnr_db"], 2)}],
        key=product_key("compress", cube, out_dir),
        description=f"TDL compression of {cube} (ranks {manifest.outputs['ranks']})",
    )
    png = Path(out_dir) / "compress.png"
    if png.exists():
        publish_image(png, key=product_key("compress-png", cube, out_dir),
                      description=f"original | decoded | error, {cube}", fresh=made_in_task_run(manifest))
    logger.info("compress %s: %.3f bpe, PSNR %.2f dB", out_dir, s["bits_per_entry"], s["psnr_db"])
    return {"artifact": str(Path(out_dir) / "compressed"), **asdict(manifest),
            **({"quicklook": str(png)} if png.exists() else {})}


def _cmd(args: argparse.Namespace) -> int:
    manifest = compress_cube(args.cube, args.out, patch=args.patch, overwrite=args.overwrite,
                             ranks=tuple(args.ranks) if args.ranks else None, step=args.step,
                             bits=args.bits, psnr=args.psnr, iters=args.iters, rdo_lambda=args.rdo_lambda,
                             progress=True)
    from tasks.info import describe

    s = manifest.stats
    test = s["test"]["psnr_db"]
    print("\n".join(describe(Path(args.out) / "compressed")))
    print("  PSNR above: over the patches' " + ("observed values (valid pixels, every band finite; "
          "peak = their range)" if s.get("distortion_entries", "observed") == "observed"
          else "finite values (no pixel of the cube is observed)") + "; "
          + ("no test patches (the cube is too small for a held-out split)" if test is None
             else f"test patches (not trained on): {test:.2f} dB") + f"; encoded at {s['encode_mb_s']:.1f} MB/s")
    seen = decoded_quality(args.out)
    print(f"decoded cube: {Path(args.out) / 'decoded.zarr'}"
          + (f" (observed pixels: PSNR {seen['psnr_db']:.2f} dB, NRMSE {seen['nrmse']:.4f})"
             if seen.get("psnr_db") is not None else ""))
    print(f"quick-look: {Path(args.out) / 'compress.png'}")
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``stage compress --cube IN.zarr --out DIR [--bits B | --step S | --psnr DB] [--ranks R R R R]``."""
    p = subparsers.add_parser("compress", help="learned-basis (TDL) tensor compression of a cube")
    p.add_argument("--cube", required=True, help="a schema-following cube (.zarr)")
    p.add_argument("--out", required=True, help="folder for patches.zarr, compressed/ and decoded.zarr")
    p.add_argument("--bits", type=int, default=None, help="quantizer bits over the cores' range")
    p.add_argument("--step", type=float, default=None, help="quantizer step in data std units (default 0.5)")
    p.add_argument("--psnr", type=float, default=None, metavar="DB",
                   help="target quality instead of a step: the coarsest step reaching this PSNR over the "
                        "observed pixels (valid, every band finite; peak = their range), as the decoded "
                        "cube's observed-pixel PSNR measures it")
    p.add_argument("--ranks", type=int, nargs="+", default=None, help="R_time R_band R_py R_px")
    p.add_argument("--patch", type=int, default=32, help="patch side in pixels (default 32)")
    p.add_argument("--iters", type=int, default=10, help="ADMM iterations (default 10)")
    p.add_argument("--rdo-lambda", type=float, default=tdl.RDO_LAMBDA,
                   help="rate-distortion optimised quantization multiplier, squared steps per bit "
                        "(default ln 2 / 6; 0: dead-zone rounding)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd)
    d = subparsers.add_parser("decompress", help="decode a compressed store (compress's compressed/) into a cube")
    d.add_argument("--store", required=True,
                   help="the compressed/ folder (or the compress --out folder that holds it)")
    d.add_argument("--out", required=True, help="the decoded cube (.zarr, Zarr v3)")
    d.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    d.set_defaults(func=_cmd_decompress)
    return p


def _cmd_decompress(args: argparse.Namespace) -> int:
    from tasks.info import describe

    decompress(compressed_store(args.store) or args.store, args.out, overwrite=args.overwrite, progress=True)
    print("\n".join(describe(args.out)))
    return 0

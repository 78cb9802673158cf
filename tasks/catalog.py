"""``data_catalog.yaml``: what the data is, where it is, and the stage parameters.

The catalog is validated whole when it is loaded (pydantic models, unknown keys refused with a
close-match suggestion), before any work starts. Relative paths resolve against the catalog file's
folder; ``${VAR}`` and ``${VAR:-default}`` in strings are replaced from the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.errors import CatalogError, did_you_mean
from tasks.legends import NLCD_CLASSES

__all__ = [
    "BandSpec",
    "Catalog",
    "ChunkSpec",
    "CubeSpec",
    "DateRule",
    "GridSpec",
    "MaskRule",
    "AnomalyParams",
    "CompressParams",
    "ClassifyParams",
    "GapfillParams",
    "LabelParams",
    "PatchParams",
    "SourceSpec",
    "load_catalog",
    "catalog_from_dict",
    "NLCD_CLASSES",
]

#: the stages a cube can enable after patching. A stage is also named in ``Stages`` and
#: ``CubeStageParams`` below, in ``tasks.stages.STAGES`` and in ``flows.cli.STAGE_COMMANDS``
#: (tests/tasks/test_stages.py checks that they agree; README "Developing": adding a stage)
StageName = Literal["anomalies", "gapfill", "classify", "compress", "labels"]


def _regex_with_group(v: str | None, group: str) -> str | None:
    """``v`` when it is a valid regular expression with the named group ``group`` (or None)."""
    if v is not None:
        try:
            compiled = re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        if group not in compiled.groupindex:
            raise ValueError(f"pattern {v!r} needs a named group (?P<{group}>...)")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class BandSpec(_Strict):
    """One band of a source: its name in the cube, where it is in the file, how to scale it."""

    name: str
    index: int = Field(ge=1, description="1-based band index in the file")
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = Field(default=None, description="raw nodata value; default: the file's")
    file: str | None = Field(
        default=None,
        description="with the source's band_files: the value of its 'band' group naming this band's file",
    )
    valid_min: float | None = Field(
        default=None, description="smallest valid physical value (after scale and offset); below: not observed")
    valid_max: float | None = Field(
        default=None, description="largest valid physical value (after scale and offset); above: not observed")

    @model_validator(mode="after")
    def _valid_interval(self) -> BandSpec:
        if self.valid_min is not None and self.valid_max is not None and self.valid_min > self.valid_max:
            raise ValueError(f"band {self.name}: valid_min {self.valid_min:g} > valid_max {self.valid_max:g}")
        return self


class DateRule(_Strict):
    """How a scene's acquisition date is found."""

    from_: Literal["auto", "filename", "metadata"] = Field(default="auto", alias="from")
    pattern: str | None = Field(
        default=None, description="regex on the file name with a named group 'date'"
    )
    format: str | None = Field(default=None, description="strptime format for the 'date' group")
    default: date | None = Field(
        default=None,
        description="date of scenes whose name and metadata carry none (e.g. a single undated scene)",
    )

    @field_validator("pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        return _regex_with_group(v, "date")


class SidecarRule(_Strict):
    """A mask stored in a second file: its name is the scene's with ``pattern`` -> ``replacement``."""

    pattern: str
    replacement: str


class MaskRule(_Strict):
    """How a QA / UDM / cloud band becomes the boolean ``valid`` mask."""

    sidecar: SidecarRule | None = None
    band: int = Field(default=1, ge=1)
    bands: list[int] | None = Field(
        default=None,
        description="several mask bands ruled alike, clear only where every one is clear (Sentinel-2 L1C's "
                    "MSK_CLASSI: 1 opaque cloud, 2 cirrus); instead of 'band'",
    )
    clear_values: list[int] | None = Field(default=None, description="values meaning clear")
    invalid_bits: list[int] | None = Field(
        default=None, description="bit positions that, when set, mean not clear"
    )
    invalid_values: list[int] | None = Field(
        default=None, description="values of (value & bit_mask) meaning not clear"
    )
    bit_mask: int | None = Field(default=None, ge=0, description="mask applied before invalid_values")

    @model_validator(mode="after")
    def _one_rule(self) -> MaskRule:
        if self.clear_values is None and self.invalid_bits is None and self.invalid_values is None:
            raise ValueError("a mask needs clear_values, invalid_bits or invalid_values")
        return self


class SourceSpec(_Strict):
    """One product: where its scenes are and how to read them."""

    kind: Literal["continuous", "categorical"] = "continuous"
    glob: list[str] = Field(description="file globs, or URLs each naming one scene (https://, s3://, /vsi...)")
    date: DateRule = DateRule()
    static: bool = Field(default=False, description="no time axis (e.g. a land-cover map)")
    bands: list[BandSpec]
    band_files: str | None = Field(
        default=None,
        description=(
            "scenes stored one file per band (Landsat, Sentinel-2, HLS): a regex on the file name "
            "with a named group 'band'; files whose names differ only where it matches are one scene, and each "
            "band's `file` gives its group value (e.g. '_(?P<band>SR_B\\d+)\\.TIF$')"
        ),
    )
    unused_band_files: list[str] = Field(
        default_factory=list,
        description=(
            "with band_files: band names ('band' group values) of the product that this source does not "
            "take (bands left out with --bands, or that only one sensor of a mixed archive has); their "
            "files are passed over, not reported as unknown bands"
        ),
    )
    band_count: int | None = Field(default=None, ge=1, description="raw bands expected in a file")
    dtypes: list[str] | None = None
    mask: MaskRule | None = None
    valid_range: tuple[float, float] | None = None
    max_nodata_share: float = Field(default=0.98, ge=0.0, le=1.0)
    classes: dict[int, str] | None = None
    resampling: (
        Literal["nearest", "bilinear", "cubic", "average", "mode", "max", "min", "med"] | None
    ) = Field(
        default=None,
        description=(
            "how the source's pixels are resampled onto the cube's grid. Default: for values, "
            "bilinear, or the area average where a cube pixel spans 1.5 of the source's or more; "
            "for class maps, nearest onto finer grids and the majority (mode) onto coarser ones"
        ),
    )
    match_descriptions: bool = Field(
        default=False,
        description=(
            "refuse a file whose band descriptions differ from the bands' names at their indexes "
            "(files of one product written with their bands in another order)"
        ),
    )
    radiometry: Literal["sentinel2_l2a", "sentinel2_l1c", "landsat_c2_l1"] | None = Field(
        default=None,
        description=(
            "per-scene scale and offset from the product's metadata instead of the bands' "
            "(sentinel2_l2a: (DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE from the SAFE's "
            "MTD_MSIL2A.xml, which changed with processing baseline 04.00; sentinel2_l1c: top-of-"
            "atmosphere reflectance (DN + RADIO_ADD_OFFSET) / QUANTIFICATION_VALUE from MTD_MSIL1C.xml; landsat_c2_l1: top-of-"
            "atmosphere reflectance (M * DN + A) / sin(sun elevation) from the scene's _MTL.txt, "
            "thermal bands as radiance M_L * DN + A_L)"
        ),
    )

    @field_validator("glob", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("band_files")
    @classmethod
    def _band_regex(cls, v: str | None) -> str | None:
        return _regex_with_group(v, "band")

    @model_validator(mode="after")
    def _consistent(self) -> SourceSpec:
        names = [b.name for b in self.bands]
        if len(set(names)) != len(names):
            raise ValueError(f"band names must be unique; got {names}")
        if not self.bands:
            raise ValueError("a source needs at least one band")
        if self.band_count is not None and max(b.index for b in self.bands) > self.band_count:
            raise ValueError(
                f"band index {max(b.index for b in self.bands)} exceeds band_count {self.band_count}"
            )
        with_file = [b.name for b in self.bands if b.file is not None]
        if self.band_files is None and with_file:
            raise ValueError(f"bands {with_file} name a `file` but the source has no band_files pattern")
        if self.band_files is not None:
            if len(with_file) != len(self.bands):
                missing = [b.name for b in self.bands if b.file is None]
                raise ValueError(f"with band_files every band needs a `file`; {missing} have none")
            files = [b.file for b in self.bands]
            if len(set(files)) != len(files):
                raise ValueError(f"band files must be unique; got {files}")
        if self.valid_range is not None and self.valid_range[0] > self.valid_range[1]:
            raise ValueError(f"valid_range must be [low, high]; got {list(self.valid_range)}")
        if self.kind == "categorical" and self.resampling in ("bilinear", "cubic", "average"):
            raise ValueError(
                f"categorical sources need nearest or mode resampling; got {self.resampling!r}"
            )
        return self


class GridSpec(_Strict):
    """The cube's target grid; what is not given comes from the first scene.

    ``crs``: default the first scene's. ``resolution`` (in the grid CRS's units): default the
    first scene's finest pixel size, or in another ``crs`` the size its pixels take there (GDAL's
    suggested warp output). ``bounds``: the area the cube covers (default: the union of the first
    ingested scenes), in ``bounds_crs`` (e.g. ``EPSG:4326`` for longitude / latitude), by default
    the grid's CRS; :meth:`bounds_in` gives them in the grid's CRS."""

    crs: str | None = None
    resolution: float | tuple[float, float] | None = None
    bounds: tuple[float, float, float, float] | None = None
    bounds_crs: str | None = None

    @model_validator(mode="after")
    def _something_given(self) -> GridSpec:
        if self.crs is None and self.resolution is None and self.bounds is None:
            raise ValueError("a grid needs a crs, a resolution or bounds (leave the grid out for the first scene's)")
        return self

    def bounds_in(self, crs: str | Any) -> tuple[float, float, float, float] | None:
        """``bounds`` in ``crs`` (the grid's), transformed from ``bounds_crs`` (edges densified)."""
        if self.bounds is None or self.bounds_crs is None:
            return self.bounds
        from tasks.aoi import bounds_in_crs

        return bounds_in_crs(self.bounds, self.bounds_crs, crs)

    @field_validator("resolution")
    @classmethod
    def _positive(cls, v: float | tuple[float, float] | None) -> float | tuple[float, float] | None:
        if v is None:
            return v
        values = v if isinstance(v, tuple) else (v,)
        if any(r <= 0 for r in values):
            raise ValueError(f"resolution must be positive; got {v}")
        return v

    @field_validator("crs", "bounds_crs")
    @classmethod
    def _known_crs(cls, v: str | None) -> str | None:
        from rasterio.crs import CRS
        from rasterio.errors import CRSError

        if v is None:
            return v
        try:
            CRS.from_user_input(v)
        except CRSError as exc:
            raise ValueError(f"unknown CRS {v!r} ({exc})") from exc
        return v

    @field_validator("bounds")
    @classmethod
    def _ordered(cls, v: tuple[float, float, float, float] | None) -> Any:
        if v is not None and (v[0] >= v[2] or v[1] >= v[3]):
            raise ValueError(f"bounds must be [xmin, ymin, xmax, ymax] with min < max; got {list(v)}")
        return v

    @property
    def xy_resolution(self) -> tuple[float, float] | None:
        r = self.resolution
        if r is None:
            return None
        return (r, r) if isinstance(r, float | int) else (float(r[0]), float(r[1]))


class ChunkSpec(_Strict):
    """Dask/Zarr chunk sizes of a cube (all bands are always in one chunk)."""

    time: int = Field(default=1, ge=1, le=366)
    y: int = Field(default=256, ge=16, le=8192)
    x: int = Field(default=256, ge=16, le=8192)


class CubeSpec(_Strict):
    """Which sources feed a cube, on what grid, chunked how."""

    sources: list[str] = Field(min_length=1)
    static: dict[str, str] = Field(default_factory=dict, description="variable -> static source")
    grid: GridSpec | None = None
    chunks: ChunkSpec = ChunkSpec()
    time_range: tuple[date | None, date | None] | None = None
    path: str | None = Field(default=None, description="default: <storage.cubes>/<name>.zarr")
    patch: PatchParams | None = Field(default=None, description="this cube's patching, key by key over stages.patch")
    params: CubeStageParams = Field(
        default_factory=lambda: CubeStageParams(),
        description="per-stage parameters for this cube, key by key over stages.<stage>",
    )
    stages: list[StageName] = Field(
        default_factory=list, description="stages run on this cube after patching"
    )
    schedule: str | None = Field(
        default=None, description="cron of this cube's scheduled new-scene run (default: orchestration.schedule)"
    )
    changed_scenes: Literal["keep", "replace"] = Field(
        default="keep",
        description="a scene file that changed since it was ingested (a re-processed delivery): keep what "
                    "the cube holds and say so every run, or replace: rebuild its date's slice from that "
                    "date's scenes as they are now",
    )

    #: what only the pipeline reads (the stages after patching, their parameters, when it runs):
    #: not how the cube is built, so not in what ingest keys its work on
    PIPELINE_FIELDS: ClassVar[frozenset[str]] = frozenset({"patch", "params", "stages", "schedule"})
    #: not keyed either: what to do with changed scenes (the scenes taken are in the manifest's key)
    UNKEYED_FIELDS: ClassVar[frozenset[str]] = PIPELINE_FIELDS | {"changed_scenes"}

    def ingest_json(self) -> str:
        """This entry as JSON without :attr:`UNKEYED_FIELDS`: what the cube's manifest key, its
        ingest parts and its template are keyed on, so listing a stage does not redo an ingest."""
        return self.model_dump_json(exclude=set(self.UNKEYED_FIELDS))

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=v)
        except ValueError as exc:
            raise ValueError(
                f"schedule must be a 5-field cron string such as '0 * * * *' (hourly) or "
                f"'30 6 * * *' (daily at 06:30); got {v!r}"
            ) from exc
        return v


class PatchParams(_Strict):
    """Patching: fixed spatial windows x all times x all bands, spatial-block split."""

    size: int = Field(default=32, ge=4, le=1024)
    stride: int | None = Field(default=None, ge=1)
    block: int = Field(default=4, ge=1)
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"fractions (train, val, test) must be >= 0 and sum to 1; got {list(v)}")
        return v


class AnomalyParams(_Strict):
    """Quantized tensor robust PCA anomaly detection (``tasks/anomalies.py``)."""

    bits: int = Field(default=8, ge=1, le=16)
    band: str | None = None
    lam: float | None = Field(default=None, gt=0)
    tile: int = Field(default=64, ge=2)
    k: float = Field(default=6.0, gt=0)


class GapfillParams(_Strict):
    """LRTC-Net gap filling, fitted self-supervised on the cube (``tasks/gapfill.py``)."""

    epochs: int = Field(default=15, ge=1)
    layers: int = Field(default=20, ge=1)
    patch: int = Field(default=32, ge=4)
    batch: int = Field(default=8, ge=1, description="training patches a step (fewer for long series)")
    seed: int = 0


class ClassifyParams(_Strict):
    """4D-CNN land-cover classification, trained on the cube's label layer (``tasks/classify.py``)."""

    label: str = "landcover"
    epochs: int = Field(default=15, ge=1)
    patch: int = Field(default=32, ge=4)
    block: int = Field(default=2, ge=1)
    seed: int = 0


class LabelParams(_Strict):
    """Label recovery: UNet + low-rank Tucker (LRTD) layer from sparse or coarse labels (``tasks/labels.py``)."""

    labels: str = Field(default="landcover", description="the cube's (y, x) label layer or a points file")
    lam: float = Field(default=10.0, ge=0, description="weight of the low-rank term (0: CE only)")
    variant: Literal["hooi", "factors"] = "hooi"
    epochs: int = Field(default=20, ge=1)
    patch: int = Field(default=32, ge=4)
    seed: int = 0


class CompressParams(_Strict):
    """Learned-basis (TDL) tensor compression (``tasks/compress.py``)."""

    ranks: list[int] | None = Field(default=None, description="(R_time, R_band, R_py, R_px)")
    step: float | None = Field(default=None, gt=0, description="quantizer step in data std units")
    bits: int | None = Field(default=None, ge=1, le=24)
    psnr: float | None = Field(default=None, gt=0, description="target PSNR (dB) instead of a step")
    iters: int = Field(default=10, ge=1)
    patch: int = Field(default=32, ge=4)

    #: keys that are one choice: a cube's own ``psnr`` replaces the shared ``step``
    one_of: ClassVar[tuple[str, ...]] = ("step", "bits", "psnr")

    @model_validator(mode="after")
    def _one_rate(self) -> CompressParams:
        given = [f"{k}={getattr(self, k)!r}" for k in self.one_of if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of step, bits and psnr (the quantizer's rate); got {', '.join(given)}")
        return self


class Stages(_Strict):
    """Per-stage parameters; a stage issue adds its own section here."""

    patch: PatchParams = PatchParams()
    anomalies: AnomalyParams = AnomalyParams()
    gapfill: GapfillParams = GapfillParams()
    compress: CompressParams = CompressParams()
    classify: ClassifyParams = ClassifyParams()
    labels: LabelParams = LabelParams()


class CubeStageParams(_Strict):
    """One cube's own stage parameters: each key given here replaces that key of ``stages.<stage>``
    (``cubes.lst.params.anomalies: {bits: 6}`` keeps the other anomaly parameters)."""

    anomalies: AnomalyParams | None = None
    gapfill: GapfillParams | None = None
    compress: CompressParams | None = None
    classify: ClassifyParams | None = None
    labels: LabelParams | None = None


# stage parameters naming a file (a points file, a class raster) when they have a file suffix; the
# pipeline resolves them against the catalog's folder as it does every other catalog path
FILE_PARAMS = {"classify": "label", "labels": "labels"}

CubeSpec.model_rebuild()  # its patch and params models are defined after it

_P = TypeVar("_P", bound=BaseModel)


def _over(shared: _P, own: _P | None) -> _P:
    """``shared`` with the keys ``own`` was given replacing its own (a cube's own stage parameters
    over ``stages.<stage>``). Keys that are one choice (``one_of``: compress's step / bits / psnr)
    are replaced together when ``own`` gives one of them."""
    if own is None:
        return shared
    given = own.model_fields_set
    group: tuple[str, ...] = getattr(type(own), "one_of", ())
    cleared = dict.fromkeys(group) if given & set(group) else {}
    return shared.model_copy(update={**cleared, **own.model_dump(include=given)})


class Storage(_Strict):
    """Roots for cubes and artifacts (local paths; relative to the catalog file)."""

    root: str = "./fusioncube-data"
    cubes: str | None = None
    artifacts: str | None = None


class Orchestration(_Strict):
    """Where the pipeline's tasks run: a local Dask cluster (default) or an existing one."""

    dask_address: str | None = Field(
        default=None, description="scheduler address, e.g. tcp://10.0.0.5:8786 (env FUSIONCUBE_DASK_ADDRESS wins)"
    )
    workers: int | None = Field(default=None, ge=1, le=512, description="local cluster workers (default: cores)")
    concurrency: int = Field(default=4, ge=1, le=1024, description="ingest parts in flight at once")
    schedule: str = Field(default="0 * * * *", description="cron of the scheduled new-scene run")


class Catalog(_Strict):
    """The whole catalog, validated. ``path`` is the file it was read from."""

    sources: dict[str, SourceSpec]
    cubes: dict[str, CubeSpec]
    stages: Stages = Stages()
    storage: Storage = Storage()
    orchestration: Orchestration = Orchestration()
    path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _references(self) -> Catalog:
        for cube_name, cube in self.cubes.items():
            for src in [*cube.sources, *cube.static.values()]:
                if src not in self.sources:
                    raise ValueError(
                        f"cubes.{cube_name}: unknown source '{src}'"
                        f"{did_you_mean(src, self.sources)}; sources are {sorted(self.sources)}"
                    )
            bands = {tuple(b.name for b in self.sources[s].bands) for s in cube.sources}
            if len(bands) > 1:
                raise ValueError(
                    f"cubes.{cube_name}: the sources of one cube must have the same band names; "
                    f"got {sorted(bands)}"
                )
            for s in cube.sources:
                if self.sources[s].static:
                    raise ValueError(f"cubes.{cube_name}: source '{s}' is static; list it under static")
            for var, s in cube.static.items():
                if not self.sources[s].static:
                    raise ValueError(
                        f"cubes.{cube_name}.static.{var}: source '{s}' is not marked static: true"
                    )
        return self

    # -- lookups ---------------------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def resolve(self, p: str) -> Path:
        """A catalog path, relative to the catalog's folder."""
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() else (self.base_dir / path)

    def source(self, name: str) -> SourceSpec:
        if name not in self.sources:
            raise CatalogError(
                f"{self.path}: no source '{name}'{did_you_mean(name, self.sources)}; "
                f"sources are {sorted(self.sources)}"
            )
        return self.sources[name]

    def cube(self, name: str) -> CubeSpec:
        if name not in self.cubes:
            raise CatalogError(
                f"{self.path}: no cube '{name}'{did_you_mean(name, self.cubes)}; "
                f"cubes are {sorted(self.cubes)}"
            )
        return self.cubes[name]

    @property
    def root(self) -> Path:
        return self.resolve(self.storage.root)

    @property
    def cubes_dir(self) -> Path:
        return self.resolve(self.storage.cubes) if self.storage.cubes else self.root / "cubes"

    @property
    def artifacts_dir(self) -> Path:
        return (
            self.resolve(self.storage.artifacts) if self.storage.artifacts else self.root / "artifacts"
        )

    @property
    def storage_roots(self) -> list[Path]:
        """The folders outputs may be written under: ``storage.root``, ``storage.cubes`` and
        ``storage.artifacts`` (symbolic links and ``..`` resolved)."""
        return [p.resolve() for p in dict.fromkeys([self.root, self.cubes_dir, self.artifacts_dir])]

    def inside_storage(self, path: Path, *, key: str) -> Path:
        """``path`` when it resolves (links, ``..``) inside a storage root, else ``CatalogError``."""
        real = path.resolve()
        if not any(real == r or r in real.parents for r in self.storage_roots):
            raise CatalogError(
                f"{self.path}: {key}: {path} resolves to {real}, outside the storage roots "
                f"{[str(r) for r in self.storage_roots]}; write outputs under storage.root "
                "(or set storage.cubes / storage.artifacts to the folder you want)"
            )
        return path

    def cube_path(self, name: str) -> Path:
        spec = self.cube(name)
        if spec.path:
            return self.inside_storage(self.resolve(spec.path), key=f"cubes.{name}.path")
        return self.inside_storage(self.cubes_dir / f"{name}.zarr", key=f"cubes.{name}")

    def patch_params(self, cube: str) -> PatchParams:
        """The cube's patching parameters: ``stages.patch`` with the keys of the cube's own
        ``cubes.<cube>.patch`` over it (as :meth:`stage_params` for the other stages)."""
        return _over(self.stages.patch, self.cube(cube).patch)

    def stage_params(self, cube: str, stage: str) -> dict[str, Any]:
        """Stage ``stage``'s parameters for ``cube`` as keyword arguments: ``stages.<stage>`` with
        the cube's own ``cubes.<cube>.params.<stage>`` keys over it; a file-valued parameter
        (``labels: points.csv``) resolved against the catalog's folder."""
        self.cube(cube)
        if stage not in CubeStageParams.model_fields:
            raise CatalogError(f"{self.path}: no stage '{stage}'{did_you_mean(stage, CubeStageParams.model_fields)}; "
                               f"stages are {sorted(CubeStageParams.model_fields)}")
        params = _over(getattr(self.stages, stage), getattr(self.cubes[cube].params, stage)).model_dump()
        key = FILE_PARAMS.get(stage)
        if key and Path(str(params[key])).suffix:
            params[key] = str(self.resolve(str(params[key])))
        return params

    def stage_input_problem(self, cube: str, stage: str) -> str | None:
        """Why ``stage`` cannot run on ``cube`` as this catalog sets it up, told before it runs (by
        ``catalog check``, and by a run before it starts the stage), else None: a labels file that
        is not there, or a label layer that neither the cube nor its static sources give.

        A layer is looked for in the cube when it is made, else among the static layers its ingest adds."""
        key = FILE_PARAMS.get(stage)
        if key is None:
            return None
        value = str(self.stage_params(cube, stage)[key])
        own = self.cube(cube).params.model_dump(exclude_unset=True).get(stage, {})
        where = (f"{self.path}: " if self.path else "") + \
            f"{f'cubes.{cube}.params' if key in own else 'stages'}.{stage}.{key}"
        if Path(value).suffix:
            return None if Path(value).exists() else f"{where}: no such file {value}"
        layers = set(self.cube(cube).static)
        path = self.cube_path(cube)
        if path.exists():
            from tasks.cube import open_cube

            try:
                ds = open_cube(path)
            except (OSError, ValueError):
                return None  # the stage itself says what is wrong with the cube
            layers |= {str(v) for v in ds.data_vars if tuple(ds[v].dims) == ("y", "x")}
        if value in layers:
            return None
        return (f"{where}: cube {cube} has no (y, x) layer {value!r} to learn from (its layers: "
                f"{', '.join(sorted(layers)) or 'none'}); add one (`fusioncube ingest ... --layer {value}=FILE`, "
                f"or a static source under cubes.{cube}.static) or name a labels file there")

    def stage_dir(self, cube: str) -> Path:
        """Where the artifacts of the stages run over ``cube`` go."""
        self.cube(cube)
        return self.inside_storage(self.artifacts_dir / cube, key=f"cubes.{cube}")

    def stage_dir_problem(self, cube: str) -> str | None:
        """Why a run of ``cube`` must not write into its artifacts folder, else None: the folder
        holds products made from another cube store that still exists. A typo in
        ``cubes.<cube>.path``, or two catalogs naming one cube with different paths, would build a
        second cube and replace the first one's products with its own (and back, run after run)."""
        from tasks.checkpoint import MANIFEST_SUFFIX, read_manifest
        from tasks.errors import CheckpointError

        folder, path = self.stage_dir(cube), self.cube_path(cube).resolve()
        if not folder.is_dir():
            return None
        for found in sorted(folder.glob(f"*{MANIFEST_SUFFIX}")):
            try:
                made = read_manifest(found.with_name(found.name[: -len(MANIFEST_SUFFIX)]))
            except CheckpointError:
                continue
            source = made.outputs.get("cube") if made is not None and isinstance(made.outputs, dict) else None
            if not source:
                continue
            other = self.resolve(str(source)).resolve()
            if other != path and other.exists():
                where = f"{self.path}: " if self.path else ""
                return (f"{where}cubes.{cube}: its products in {folder} were made from the cube {other}, while this "
                        f"catalog's cube is {path}; a run would {'build a second cube and ' if not path.exists() else ''}"
                        f"replace them. Fix cubes.{cube}.path (a typo?), or give this cube another name or "
                        "storage.artifacts folder")
        return None


# -- loading -----------------------------------------------------------------------------------
_ENV = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def _expand_env(value: Any, where: str, file: str, env: Mapping[str, str] | None = None) -> Any:
    env = os.environ if env is None else {**os.environ, **env}
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group("name"), m.group("default")
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise CatalogError(
                f"{file}: {where}: environment variable {name} is not set "
                f"(set it, or write ${{{name}:-default}})"
            )

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k), file, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]", file, env) for i, v in enumerate(value)]
    return value


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that the location ``loc`` (minus its last key) points into."""
    model: Any = Catalog
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(part)
            if field is None:
                # a dict key (source name, cube name): stay on the dict's value type
                continue
            ann = field.annotation
            model = _unwrap(ann)
        else:
            model = None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(ann: Any) -> Any:
    import typing

    args = typing.get_args(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in reversed(args):
        found = _unwrap(a)
        if found is not None:
            return found
    return None


def _format_errors(exc: ValidationError, file: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        loc = tuple(p for p in loc if p not in ("list[str]", "str", "float", "tuple[float, float]"))
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model = _model_at(loc)
            hint = did_you_mean(str(loc[-1]), model.model_fields if model else [])
            allowed = (
                f"; allowed keys: {sorted(f.alias or n for n, f in model.model_fields.items() if n != 'path')}"
                if model
                else ""
            )
            msg = f"unknown key{hint}{allowed}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] != "value_error" and "input" in err and not isinstance(err["input"], dict | list):
            msg = f"{msg}; got {err['input']!r}"
        lines.append(f"  {key}: {msg}" if key else f"  {msg}")
    return f"{file}: invalid catalog\n" + "\n".join(lines)


def catalog_from_dict(
    raw: dict[str, Any], *, path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> Catalog:
    """Validate a catalog given as a mapping (``path`` anchors relative paths and names errors;
    ``env`` overrides environment variables for ``${VAR}`` expansion)."""
    file = str(path) if path is not None else "<catalog>"
    if not isinstance(raw, dict):
        raise CatalogError(f"{file}: the catalog must be a mapping with sources and cubes; got {type(raw).__name__}")
    raw = _expand_env(raw, "", file, env)
    try:
        cat = Catalog.model_validate(raw)
    except ValidationError as exc:
        raise CatalogError(_format_errors(exc, file)) from None
    cat = cat.model_copy(update={"path": Path(path).resolve() if path is not None else None})
    for name in cat.cubes:  # output paths inside the storage roots, checked before any work
        cat.cube_path(name)
    return cat


def load_catalog(path: str | Path, *, env: Mapping[str, str] | None = None) -> Catalog:
    """Read and validate ``data_catalog.yaml``. Raises ``CatalogError`` naming the file and key.

    ``env`` overrides environment variables for ``${VAR}`` expansion (e.g. the demo's folders).
    """
    path = Path(path)
    if not path.exists():
        raise CatalogError(f"{path}: catalog file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML ({exc})") from exc
    if raw is None:
        raise CatalogError(f"{path}: the catalog is empty; it needs 'sources' and 'cubes'")
    return catalog_from_dict(raw, path=path, env=env)

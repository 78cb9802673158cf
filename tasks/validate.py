"""Scene validation: a cheap numpy profile per scene, one Great Expectations call per batch.

Great Expectations never sees pixels. :func:`profile_array` reduces a raw ``(bands, rows, cols)``
array to a :class:`SceneProfile` (CRS, band count, dtype, nodata share, physical value range,
class codes); :func:`validate_profiles` puts the profiles of a batch in a table, one row per
scene, and validates it against the expectations that :class:`ValidationRules` asks for in one
GE call (class codes: a second, long ``(scene, code)`` table). GE's unexpected row indices map
each failure back to its scene, and each scene gets a list of readable reasons.

Importing GE takes seconds, so it is imported when the first :class:`SceneValidator` is built;
:func:`validate_profiles` reuses one module-level validator, after which a call costs tens of
milliseconds. GE's metric progress bars are turned off on the validator's context, and GE's
loggers are set to WARNING unless the application configured them. The installed GE (1.24)
sends no usage statistics (the context's ``analytics_enabled`` flag is still set to false) and
an ephemeral context makes no network call.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tasks.errors import did_you_mean

if TYPE_CHECKING:
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.data_context import AbstractDataContext

__all__ = [
    "SceneProfile",
    "SceneValidator",
    "ValidationRules",
    "default_validator",
    "profile_array",
    "validate_profiles",
]

log = logging.getLogger(__name__)

# The result format that returns every failing row's index (not only the first 20).
RESULT_FORMAT: dict[str, Any] = {"result_format": "COMPLETE"}

_DTYPE_NAMES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
)

# Reasons are listed in this order, whatever order GE returns its results in.
_RULE_ORDER = (
    "crs",
    "band_count",
    "dtype",
    "nodata_share",
    "valid_pixel",
    "value_range",
    "finite",
    "class_codes_profiled",
    "class_codes",
)


# -- data ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneProfile:
    """What the validation rules look at in one scene, computed cheaply with numpy.

    Attributes
    ----------
    scene : str
        Path or id, unique within a batch.
    crs : str or None
        ``"EPSG:32615"`` or a WKT / PROJ string; None (or ``""``) when the raster has no CRS.
    band_count : int
        Raw band count of the file.
    dtype : str
        NumPy dtype name of the raw raster, e.g. ``"uint16"``.
    nodata_share : float
        Share of pixels (0..1) that are nodata or NaN in the scene's footprint window.
    value_min, value_max : float or None
        Min / max of the valid pixels in physical units (after scale and offset); None when
        there is no valid pixel.
    class_codes : tuple of int or None
        Distinct codes of a categorical raster; None for continuous rasters.
    finite : bool
        False when any valid pixel is +-inf.
    """

    scene: str
    crs: str | None
    band_count: int
    dtype: str
    nodata_share: float
    value_min: float | None
    value_max: float | None
    class_codes: tuple[int, ...] | None = None
    finite: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.nodata_share <= 1.0:  # also refuses NaN
            raise ValueError(
                f"{self.scene}: nodata_share is a share of pixels in 0..1; got {self.nodata_share}"
            )
        if (self.value_min is None) != (self.value_max is None):
            raise ValueError(
                f"{self.scene}: value_min and value_max are both None (no valid pixel) or both "
                f"set; got value_min={self.value_min}, value_max={self.value_max}"
            )
        if (
            self.value_min is not None
            and self.value_max is not None
            and self.value_min > self.value_max
        ):
            raise ValueError(
                f"{self.scene}: value_min must not exceed value_max; got "
                f"{self.value_min} > {self.value_max}"
            )


@dataclass(frozen=True)
class ValidationRules:
    """What a batch of scenes of one source must meet; None switches a rule off.

    Attributes
    ----------
    band_count : int or None
        Expected raw band count.
    dtypes : tuple of str or None
        Allowed raw dtypes (NumPy names).
    max_nodata_share : float
        Largest allowed nodata share. Below 1, a scene also needs at least one valid pixel;
        at 1 an all-nodata scene passes (a fully clouded day is still a day of the record).
    value_range : (float, float) or None
        Allowed physical range, inclusive, for ``value_min`` and ``value_max``.
    class_codes : tuple of int or None
        The class domain of a categorical source; every scene must then carry class codes.
    require_crs : bool
        A scene without a CRS fails.
    """

    band_count: int | None = None
    dtypes: tuple[str, ...] | None = None
    max_nodata_share: float = 0.98
    value_range: tuple[float, float] | None = None
    class_codes: tuple[int, ...] | None = None
    require_crs: bool = True

    def __post_init__(self) -> None:
        # Normalise sequences to tuples (the rules key a cache of expectation suites).
        if self.band_count is not None and self.band_count < 1:
            raise ValueError(f"band_count must be at least 1 or None; got {self.band_count}")
        if self.dtypes is not None:
            dtypes = tuple(str(d) for d in self.dtypes)
            for d in dtypes:
                try:
                    np.dtype(d)
                except TypeError as exc:
                    raise ValueError(
                        f"dtypes holds NumPy dtype names; {d!r} is not one{did_you_mean(d, _DTYPE_NAMES)}"
                    ) from exc
            object.__setattr__(self, "dtypes", dtypes)
        if not 0.0 <= self.max_nodata_share <= 1.0:
            raise ValueError(f"max_nodata_share must be in 0..1; got {self.max_nodata_share}")
        if self.value_range is not None:
            lo, hi = (float(v) for v in self.value_range)
            if not lo <= hi:
                raise ValueError(f"value_range must be (low, high); got {self.value_range}")
            object.__setattr__(self, "value_range", (lo, hi))
        if self.class_codes is not None:
            object.__setattr__(self, "class_codes", tuple(sorted(int(c) for c in self.class_codes)))


# -- profiling -------------------------------------------------------------------------------
def profile_array(
    scene: str,
    raw: np.ndarray,
    *,
    nodata: float | None,
    scale: float = 1.0,
    offset: float = 0.0,
    crs: Any,
    categorical: bool = False,
) -> SceneProfile:
    """Profile a raw ``(bands, rows, cols)`` array with numpy.

    A pixel is nodata when any of its bands equals ``nodata`` or is NaN (the cube's ``valid``
    mask is per pixel, so a pixel missing one band is not usable). Min / max and class codes
    come from the valid pixels; +-inf values there set ``finite=False`` and are left out of the
    min / max. An array with no pixels or no bands profiles as all nodata.

    Parameters
    ----------
    scene : str
        Path or id of the scene.
    raw : numpy.ndarray
        Raw values, shape ``(bands, rows, cols)``, in the file's dtype.
    nodata : float or None
        Raw nodata value; None when the file has none (NaN still counts as nodata).
    scale, offset : float
        Physical value = ``raw * scale + offset`` (applied to the min / max only).
    crs : str, rasterio.crs.CRS or None
        The scene's CRS; anything whose ``str()`` names it. None or empty means no CRS.
    categorical : bool
        Collect the distinct raw codes of the valid pixels into ``class_codes``.

    Returns
    -------
    SceneProfile
    """
    raw = np.asarray(raw)
    if raw.ndim != 3:
        raise ValueError(
            f"{scene}: raw must be (bands, rows, cols); got shape {raw.shape} "
            "(add a band axis with raw[np.newaxis] for a single band)"
        )
    bands, rows, cols = raw.shape
    crs_text = str(crs) if crs is not None else ""
    is_float = np.issubdtype(raw.dtype, np.floating)
    nodata_is_nan = nodata is not None and isinstance(nodata, float) and math.isnan(nodata)

    invalid = np.zeros((rows, cols), dtype=bool)  # (rows, cols)
    for b in range(bands):
        band = raw[b]
        if nodata is not None and not nodata_is_nan:
            invalid |= band == nodata
        if is_float:
            invalid |= np.isnan(band)
    n_pixels = rows * cols
    n_invalid = n_pixels if bands == 0 else int(invalid.sum())
    nodata_share = 1.0 if n_pixels == 0 else n_invalid / n_pixels

    lows: list[float] = []
    highs: list[float] = []
    codes: set[int] = set()
    finite = True
    if n_invalid < n_pixels:
        valid = ~invalid
        for b in range(bands):
            band = raw[b]
            if is_float:
                usable = valid & np.isfinite(band)
                if (usable != valid).any():
                    finite = False
            else:
                usable = valid
            if not usable.any():
                continue
            # reductions with ``where`` scan the band once, without copying the valid pixels
            if is_float:
                lows.append(float(np.min(band, where=usable, initial=np.inf)))
                highs.append(float(np.max(band, where=usable, initial=-np.inf)))
            else:
                info = np.iinfo(band.dtype) if np.issubdtype(band.dtype, np.integer) else None
                lows.append(float(np.min(band, where=usable, initial=info.max if info else True)))
                highs.append(float(np.max(band, where=usable, initial=info.min if info else False)))
            if categorical:
                distinct = np.unique(band[usable])
                fractional = distinct[distinct != np.round(distinct)]
                if fractional.size:
                    raise ValueError(
                        f"{scene}: categorical rasters hold integer class codes; band {b + 1} "
                        f"has non-integer values {fractional[:3].tolist()} (profile it with "
                        "categorical=False)"
                    )
                codes.update(int(c) for c in distinct)

    value_min = value_max = None
    if lows:
        ends = (min(lows) * scale + offset, max(highs) * scale + offset)
        value_min, value_max = min(ends), max(ends)  # a negative scale swaps the ends
    return SceneProfile(
        scene=str(scene),
        crs=crs_text or None,
        band_count=int(bands),
        dtype=raw.dtype.name,
        nodata_share=float(nodata_share),
        value_min=value_min,
        value_max=value_max,
        class_codes=tuple(sorted(codes)) if categorical else None,
        finite=finite,
    )


# -- validation ------------------------------------------------------------------------------
class SceneValidator:
    """A Great Expectations context, data assets and suites, built once and reused.

    Holds an ephemeral GE context with a pandas data source and two dataframe assets (the
    profile table and the long class-code table), each with a whole-dataframe batch
    definition, and one expectation suite per distinct :class:`ValidationRules`.

    Building one imports GE (seconds, the first time in a process); :meth:`validate` then
    takes tens of milliseconds for a batch of 100 scenes. Building it leaves the process-wide
    current GE context as it was, when there was one. Calls to :meth:`validate` are
    serialised with a lock: GE keeps the loaded batch on the data source's execution engine,
    which the two assets share.
    """

    def __init__(self) -> None:
        gx_log = logging.getLogger("great_expectations")
        quiet = gx_log.level == logging.NOTSET  # the application left GE's logs alone
        if quiet:  # GE logs hundreds of INFO lines while importing
            gx_log.setLevel(logging.WARNING)
        started = time.perf_counter()
        import great_expectations as gx
        from great_expectations.data_context import project_manager, set_context
        from great_expectations.data_context.types.base import ProgressBarsConfig
        from great_expectations.exceptions import DataContextRequiredError

        if quiet:  # this GE module sets its logger to INFO on import; let it inherit WARNING
            logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.NOTSET)
        try:
            previous: AbstractDataContext | None = project_manager.get_current_project()
        except DataContextRequiredError:
            previous = None
        context = gx.get_context(mode="ephemeral")
        if previous is not None:
            set_context(previous)
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.enable_analytics(False)
        source = context.data_sources.add_pandas("scene_profiles")
        self._context = context
        self._profiles: BatchDefinition = source.add_dataframe_asset(
            "profiles"
        ).add_batch_definition_whole_dataframe("all scenes")
        self._codes: BatchDefinition = source.add_dataframe_asset(
            "class_codes"
        ).add_batch_definition_whole_dataframe("all codes")
        self._suites: dict[ValidationRules, tuple[ExpectationSuite, ExpectationSuite | None]] = {}
        self._lock = threading.Lock()
        log.debug("built the scene validator in %.2f s", time.perf_counter() - started)

    @property
    def context(self) -> AbstractDataContext:
        """The validator's own ephemeral GE context."""
        return self._context

    def suites(self, rules: ValidationRules) -> tuple[ExpectationSuite, ExpectationSuite | None]:
        """The expectation suites for the profile table and the class-code table (or None)."""
        if rules not in self._suites:
            self._suites[rules] = _build_suites(rules, name=f"scenes-{len(self._suites)}")
        return self._suites[rules]

    def validate(
        self, profiles: Sequence[SceneProfile], rules: ValidationRules
    ) -> dict[str, list[str]]:
        """Map each scene to its list of failure reasons (an empty list: it passed).

        Parameters
        ----------
        profiles : sequence of SceneProfile
            One per scene; scene names must be unique.
        rules : ValidationRules

        Returns
        -------
        dict of str to list of str
            In the order of ``profiles``.

        Raises
        ------
        ValueError
            Duplicate scene names.
        RuntimeError
            Great Expectations could not evaluate an expectation.
        """
        profiles = list(profiles)
        counts = Counter(p.scene for p in profiles)
        if len(counts) != len(profiles):
            dupes = sorted(n for n, k in counts.items() if k > 1)
            raise ValueError(
                f"scene names must be unique within a batch; got duplicates {dupes} "
                "(validate them in separate batches or give them distinct ids)"
            )
        if not profiles:
            return {}
        started = time.perf_counter()
        table = _profile_table(profiles)
        code_rows, code_table = _code_table(profiles)
        failed: dict[int, set[str]] = defaultdict(set)
        bad_codes: dict[int, set[int]] = defaultdict(set)
        with self._lock:
            profile_suite, code_suite = self.suites(rules)
            result = self._profiles.get_batch(batch_parameters={"dataframe": table}).validate(
                profile_suite, result_format=RESULT_FORMAT
            )
            for rule, rows in _unexpected_rows(result):
                for row in rows:
                    failed[row].add(rule)
            if code_suite is not None and len(code_table):
                result = self._codes.get_batch(batch_parameters={"dataframe": code_table}).validate(
                    code_suite, result_format=RESULT_FORMAT
                )
                for _, rows in _unexpected_rows(result):
                    for row in rows:
                        scene_row = int(code_rows[row])
                        failed[scene_row].add("class_codes")
                        bad_codes[scene_row].add(int(code_table["code"].iat[row]))
        out = {
            p.scene: _reasons(p, failed.get(i, set()), bad_codes.get(i, set()), rules)
            for i, p in enumerate(profiles)
        }
        n_failed = sum(1 for r in out.values() if r)
        log.info(
            "validated %d scenes: %d passed, %d failed", len(out), len(out) - n_failed, n_failed
        )
        log.debug("validation took %.3f s", time.perf_counter() - started)
        return out


_default: SceneValidator | None = None
_default_lock = threading.Lock()


def default_validator() -> SceneValidator:
    """The process-wide :class:`SceneValidator`, built on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SceneValidator()
        return _default


def validate_profiles(
    profiles: Sequence[SceneProfile], rules: ValidationRules
) -> dict[str, list[str]]:
    """Map each scene to its list of failure reasons (empty list = passed).

    Validates the whole batch in one Great Expectations call on the shared
    :func:`default_validator`; see :meth:`SceneValidator.validate`.

    Examples
    --------
    >>> validate_profiles([profile], ValidationRules(band_count=4))  # doctest: +SKIP
    {'scene_a.tif': ['band count 3, expected 4']}
    """
    return default_validator().validate(profiles, rules)


# -- helpers ---------------------------------------------------------------------------------
def _build_suites(
    rules: ValidationRules, *, name: str
) -> tuple[ExpectationSuite, ExpectationSuite | None]:
    import great_expectations as gx

    expect = gx.expectations
    suite = gx.ExpectationSuite(name=name)

    def add(rule: str, expectation_type: type, **kwargs: Any) -> None:
        # meta["rule"] maps each result back to the rule that explains it
        suite.add_expectation(expectation_type(meta={"rule": rule}, **kwargs))

    if rules.require_crs:
        add("crs", expect.ExpectColumnValuesToNotBeNull, column="crs")
    if rules.band_count is not None:
        add(
            "band_count",
            expect.ExpectColumnValuesToBeInSet,
            column="band_count",
            value_set=[rules.band_count],
        )
    if rules.dtypes is not None:
        add(
            "dtype",
            expect.ExpectColumnValuesToBeInSet,
            column="dtype",
            value_set=list(rules.dtypes),
        )
    add(
        "nodata_share",
        expect.ExpectColumnValuesToBeBetween,
        column="nodata_share",
        max_value=rules.max_nodata_share,
    )
    if rules.max_nodata_share < 1.0:
        add("valid_pixel", expect.ExpectColumnValuesToNotBeNull, column="value_min")
    if rules.value_range is not None:
        lo, hi = rules.value_range
        for column in ("value_min", "value_max"):  # nulls (no valid pixel) are skipped
            add(
                "value_range",
                expect.ExpectColumnValuesToBeBetween,
                column=column,
                min_value=lo,
                max_value=hi,
            )
    add("finite", expect.ExpectColumnValuesToBeInSet, column="finite", value_set=[True])
    if rules.class_codes is None:
        return suite, None
    add(
        "class_codes_profiled",
        expect.ExpectColumnValuesToBeInSet,
        column="has_class_codes",
        value_set=[True],
    )
    profile_suite, suite = suite, gx.ExpectationSuite(name=f"{name}-class-codes")
    add(
        "class_codes",
        expect.ExpectColumnValuesToBeInSet,
        column="code",
        value_set=list(rules.class_codes),
    )
    return profile_suite, suite


def _profile_table(profiles: Sequence[SceneProfile]) -> pd.DataFrame:
    """One row per scene, row i = profiles[i] (a RangeIndex, so GE's row indices are positions)."""
    return pd.DataFrame(
        {
            "scene": [p.scene for p in profiles],
            "crs": pd.Series([p.crs or None for p in profiles], dtype=object),
            "band_count": np.array([p.band_count for p in profiles], dtype=np.int64),
            "dtype": [p.dtype for p in profiles],
            "nodata_share": np.array([p.nodata_share for p in profiles], dtype=np.float64),
            "value_min": np.array([_nan_if_none(p.value_min) for p in profiles], dtype=np.float64),
            "value_max": np.array([_nan_if_none(p.value_max) for p in profiles], dtype=np.float64),
            "finite": np.array([p.finite for p in profiles], dtype=bool),
            "has_class_codes": np.array([p.class_codes is not None for p in profiles], dtype=bool),
        }
    )


def _code_table(profiles: Sequence[SceneProfile]) -> tuple[np.ndarray, pd.DataFrame]:
    """The class codes exploded to a long table: one row per (scene, code).

    Returns the scene row of each code row and the table ``(scene, code)``.
    """
    rows = [i for i, p in enumerate(profiles) for _ in (p.class_codes or ())]
    table = pd.DataFrame(
        {
            "scene": [profiles[i].scene for i in rows],
            "code": np.array([c for p in profiles for c in (p.class_codes or ())], dtype=np.int64),
        }
    )
    return np.array(rows, dtype=np.int64), table


def _unexpected_rows(result: Any) -> list[tuple[str, list[int]]]:
    """``(rule, failing row indices)`` per failed expectation of a suite validation result."""
    out: list[tuple[str, list[int]]] = []
    for res in result.results:
        rule = (res.expectation_config.meta or {}).get("rule", res.expectation_config.type)
        message = _exception_message(res.exception_info)
        if message is not None:
            raise RuntimeError(
                f"Great Expectations could not evaluate the {rule!r} rule "
                f"({res.expectation_config.type} on column "
                f"{res.expectation_config.kwargs.get('column')!r}): {message}"
            )
        if not res.success:
            out.append((rule, [int(i) for i in res.result.get("unexpected_index_list") or []]))
    return out


def _exception_message(info: Any) -> str | None:
    """The message of a raised exception in an expectation result's ``exception_info``.

    GE 1.x reports either one ``{raised_exception, exception_message, ...}`` dict or a dict of
    them keyed by metric id.
    """
    if not info:
        return None
    entries = (
        [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    )
    for entry in entries:
        if entry.get("raised_exception"):
            return str(entry.get("exception_message"))
    return None


def _reasons(
    p: SceneProfile, failed: set[str], bad_codes: set[int], rules: ValidationRules
) -> list[str]:
    reasons: list[str] = []
    for rule in _RULE_ORDER:
        if rule not in failed:
            continue
        if rule == "crs":
            reasons.append("no CRS")
        elif rule == "band_count":
            reasons.append(f"band count {p.band_count}, expected {rules.band_count}")
        elif rule == "dtype":
            allowed = tuple(rules.dtypes or ())
            expected = allowed[0] if len(allowed) == 1 else "one of " + ", ".join(allowed)
            reasons.append(f"dtype {p.dtype}, expected {expected}")
        elif rule == "nodata_share":
            reasons.append(f"nodata share {p.nodata_share:.4g} exceeds {rules.max_nodata_share:g}")
        elif rule == "valid_pixel":
            reasons.append("no valid pixel (all nodata)")
        elif rule == "value_range":
            lo, hi = rules.value_range or (math.nan, math.nan)
            reasons.append(
                f"values {_num(p.value_min)}..{_num(p.value_max)} outside the allowed range "
                f"{_num(lo)}..{_num(hi)}"
            )
        elif rule == "finite":
            reasons.append("non-finite values (inf) among the valid pixels")
        elif rule == "class_codes_profiled":
            reasons.append("no class codes profiled; the rules expect a categorical raster")
        elif rule == "class_codes":
            reasons.append(
                f"class codes {sorted(bad_codes)} not in the class domain {_domain(rules.class_codes or ())}"
            )
    return reasons


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _num(value: float | None) -> str:
    """A number as people write it: ``0.0``, ``1.7``, ``65535.0``, ``1e-09``."""
    if value is None:
        return "None"
    text = f"{value:.6g}"
    return text if any(c in text for c in ".eni") else text + ".0"


def _domain(codes: Sequence[int], *, limit: int = 20) -> str:
    if len(codes) <= limit:
        return str(list(codes))
    shown = ", ".join(str(c) for c in codes[:limit])
    return f"[{shown}, ... ({len(codes)} codes)]"

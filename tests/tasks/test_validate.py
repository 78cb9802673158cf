"""Scene profiles and their Great Expectations validation (tasks/validate.py)."""

from __future__ import annotations

import socket
import time
from dataclasses import replace

import numpy as np
import pytest
from rasterio.crs import CRS

import tasks.validate as validate_mod
from tasks.validate import (
    SceneProfile,
    SceneValidator,
    ValidationRules,
    default_validator,
    profile_array,
    validate_profiles,
)

NLCD_CODES = (11, 21, 22, 23, 24, 31, 41, 42, 43, 52, 71, 81, 82, 90, 95)

# Rules for a PlanetScope-like 4-band uint16 reflectance source (see data_catalog.yaml).
REFLECTANCE = ValidationRules(
    band_count=4, dtypes=("uint16",), max_nodata_share=0.98, value_range=(0.0, 1.2)
)
LANDCOVER = ValidationRules(band_count=1, dtypes=("uint8",), class_codes=NLCD_CODES)


def good(scene: str = "good.tif", **changes: object) -> SceneProfile:
    """A profile that meets REFLECTANCE; ``changes`` break one rule at a time."""
    profile = SceneProfile(
        scene=scene,
        crs="EPSG:32615",
        band_count=4,
        dtype="uint16",
        nodata_share=0.1,
        value_min=0.0,
        value_max=0.9,
    )
    return replace(profile, **changes)


@pytest.fixture(scope="module")
def validator() -> SceneValidator:
    """The shared validator (importing GE takes seconds; build it once for the module)."""
    return default_validator()


# -- validation ------------------------------------------------------------------------------
def test_good_profile_passes(validator: SceneValidator) -> None:
    assert validate_profiles([good()], REFLECTANCE) == {"good.tif": []}


def test_empty_batch(validator: SceneValidator) -> None:
    assert validate_profiles([], REFLECTANCE) == {}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"band_count": 3}, "band count 3, expected 4"),
        ({"dtype": "float32"}, "dtype float32, expected uint16"),
        ({"crs": None}, "no CRS"),
        ({"crs": ""}, "no CRS"),
        ({"nodata_share": 0.995}, "nodata share 0.995 exceeds 0.98"),
        ({"value_max": 1.7}, "values 0.0..1.7 outside the allowed range 0.0..1.2"),
        ({"value_min": -0.5}, "values -0.5..0.9 outside the allowed range 0.0..1.2"),
        ({"finite": False}, "non-finite values (inf) among the valid pixels"),
    ],
    ids=["band_count", "dtype", "no_crs", "empty_crs", "nodata", "above", "below", "inf"],
)
def test_each_rule_reports_scene_and_reason(
    validator: SceneValidator, changes: dict[str, object], reason: str
) -> None:
    out = validate_profiles([good("bad.tif", **changes)], REFLECTANCE)
    assert out == {"bad.tif": [reason]}


def test_all_nodata_fails_below_full_share_and_passes_at_one(validator: SceneValidator) -> None:
    empty = good("empty.tif", nodata_share=1.0, value_min=None, value_max=None)
    out = validate_profiles([empty], REFLECTANCE)
    assert out == {"empty.tif": ["nodata share 1 exceeds 0.98", "no valid pixel (all nodata)"]}
    # max_nodata_share=1: a fully clouded day is still a day of the record
    assert validate_profiles([empty], replace(REFLECTANCE, max_nodata_share=1.0)) == {
        "empty.tif": []
    }


def test_no_valid_pixel_reported_even_when_share_allowed(validator: SceneValidator) -> None:
    # every valid pixel was inf: share is fine, but nothing is left to measure
    profile = good("inf.tif", value_min=None, value_max=None, finite=False)
    assert validate_profiles([profile], REFLECTANCE)["inf.tif"] == [
        "no valid pixel (all nodata)",
        "non-finite values (inf) among the valid pixels",
    ]


def test_switched_off_rules_are_not_checked(validator: SceneValidator) -> None:
    loose = ValidationRules(max_nodata_share=1.0, require_crs=False)
    odd = good("odd.tif", crs=None, band_count=7, dtype="float64", value_max=99.0)
    assert validate_profiles([odd], loose) == {"odd.tif": []}


def test_dtype_reason_lists_the_allowed_dtypes(validator: SceneValidator) -> None:
    rules = replace(REFLECTANCE, dtypes=("uint16", "int16"))
    out = validate_profiles([good("f.tif", dtype="float32")], rules)
    assert out == {"f.tif": ["dtype float32, expected one of uint16, int16"]}


def test_mixed_batch_maps_failures_to_their_scenes(validator: SceneValidator) -> None:
    batch = [
        good("a.tif"),
        good("b.tif", band_count=3, crs=None),
        good("c.tif"),
        good("d.tif", nodata_share=0.99, value_max=1.5),
        good("e.tif", dtype="int16", finite=False),
    ]
    out = validate_profiles(batch, REFLECTANCE)
    assert list(out) == ["a.tif", "b.tif", "c.tif", "d.tif", "e.tif"]
    assert out == {
        "a.tif": [],
        "b.tif": ["no CRS", "band count 3, expected 4"],
        "c.tif": [],
        "d.tif": [
            "nodata share 0.99 exceeds 0.98",
            "values 0.0..1.5 outside the allowed range 0.0..1.2",
        ],
        "e.tif": [
            "dtype int16, expected uint16",
            "non-finite values (inf) among the valid pixels",
        ],
    }


def landcover(scene: str, codes: tuple[int, ...] | None) -> SceneProfile:
    return SceneProfile(
        scene=scene,
        crs="EPSG:5070",
        band_count=1,
        dtype="uint8",
        nodata_share=0.0,
        value_min=11.0,
        value_max=95.0,
        class_codes=codes,
    )


def test_class_codes_outside_the_domain_per_scene(validator: SceneValidator) -> None:
    batch = [
        landcover("ok.tif", (11, 41, 95)),
        landcover("bad.tif", (7, 11, 200)),
        landcover("worse.tif", (3,)),
        landcover("none.tif", ()),
    ]
    out = validate_profiles(batch, LANDCOVER)
    domain = str(list(NLCD_CODES))
    assert out == {
        "ok.tif": [],
        "bad.tif": [f"class codes [7, 200] not in the class domain {domain}"],
        "worse.tif": [f"class codes [3] not in the class domain {domain}"],
        "none.tif": [],
    }


def test_categorical_rules_need_class_codes(validator: SceneValidator) -> None:
    out = validate_profiles([landcover("cont.tif", None)], LANDCOVER)
    assert out == {"cont.tif": ["no class codes profiled; the rules expect a categorical raster"]}


def test_long_class_domain_is_abbreviated(validator: SceneValidator) -> None:
    rules = ValidationRules(class_codes=tuple(range(100)))
    out = validate_profiles([landcover("x.tif", (5, 250))], rules)
    assert out["x.tif"] == [
        "class codes [250] not in the class domain "
        "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, ... (100 codes)]"
    ]


def test_more_failing_rows_than_ge_samples(validator: SceneValidator) -> None:
    # GE keeps 20 rows in its partial lists; COMPLETE returns every failing index
    batch = [good(f"s{i:03d}.tif", band_count=3 if i % 2 else 4) for i in range(60)]
    out = validate_profiles(batch, REFLECTANCE)
    assert [s for s, r in out.items() if r] == [f"s{i:03d}.tif" for i in range(1, 60, 2)]


def test_duplicate_scene_names_raise(validator: SceneValidator) -> None:
    with pytest.raises(ValueError, match=r"unique within a batch; got duplicates \['a.tif'\]"):
        validate_profiles([good("a.tif"), good("b.tif"), good("a.tif")], REFLECTANCE)


def test_ge_evaluation_errors_are_raised_not_passed(
    validator: SceneValidator, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = validate_mod._profile_table
    monkeypatch.setattr(validate_mod, "_profile_table", lambda p: table(p).drop(columns="dtype"))
    with pytest.raises(RuntimeError, match=r"could not evaluate the 'dtype' rule.*does not exist"):
        validate_profiles([good()], REFLECTANCE)


def test_hundred_profiles_well_under_a_second(validator: SceneValidator) -> None:
    rng = np.random.default_rng(0)
    batch = [
        good(
            f"s{i:03d}.tif",
            nodata_share=float(rng.uniform(0, 1)),
            value_max=float(rng.uniform(0.5, 1.5)),
        )
        for i in range(100)
    ]
    validate_profiles(batch, REFLECTANCE)  # warm (suite built)
    started = time.perf_counter()
    out = validate_profiles(batch, REFLECTANCE)
    assert time.perf_counter() - started < 1.0
    assert len(out) == 100


def test_validator_is_quiet_offline_and_leaves_the_current_context(
    validator: SceneValidator, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import great_expectations as gx
    from great_expectations.data_context import project_manager

    theirs = gx.get_context(mode="ephemeral")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    fresh = SceneValidator()
    assert project_manager.get_current_project() is theirs
    out = fresh.validate([good(), good("b.tif", band_count=2)], REFLECTANCE)
    assert out == {"good.tif": [], "b.tif": ["band count 2, expected 4"]}
    captured = capfd.readouterr()
    assert "Calculating Metrics" not in captured.err + captured.out


# -- rules and profiles ----------------------------------------------------------------------
def test_rules_check_their_arguments() -> None:
    with pytest.raises(ValueError, match="did you mean 'uint16'"):
        ValidationRules(dtypes=("unit16",))
    with pytest.raises(ValueError, match=r"value_range must be \(low, high\)"):
        ValidationRules(value_range=(1.2, 0.0))
    with pytest.raises(ValueError, match="max_nodata_share must be in 0..1"):
        ValidationRules(max_nodata_share=1.5)
    rules = ValidationRules(dtypes=["uint8"], class_codes=[21, 11], value_range=(0, 1))  # type: ignore[arg-type]
    assert rules.dtypes == ("uint8",)
    assert rules.class_codes == (11, 21)
    assert rules.value_range == (0.0, 1.0)
    hash(rules)


def test_profile_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="nodata_share is a share of pixels in 0..1; got 1.5"):
        good(nodata_share=1.5)
    with pytest.raises(ValueError, match="both None"):
        good(value_min=None)
    with pytest.raises(ValueError, match="must not exceed"):
        good(value_min=2.0, value_max=1.0)


def test_profile_uint16_with_nodata_and_scale() -> None:
    rng = np.random.default_rng(42)
    raw = rng.integers(100, 9000, size=(2, 4, 4), dtype=np.uint16)  # (bands, rows, cols)
    raw[0, 0, 0] = 0  # nodata in one band makes the pixel nodata
    raw[:, 3, :] = 0  # a nodata row
    raw[1, 1, 1] = 50  # the lowest valid value
    raw[0, 2, 2] = 12000  # the highest valid value
    raw[1, 0, 0] = 13000  # in a nodata pixel: not counted
    p = profile_array("scene.tif", raw, nodata=0, scale=0.0001, offset=0.0, crs="EPSG:32615")
    assert p.scene == "scene.tif"
    assert p.crs == "EPSG:32615"
    assert (p.band_count, p.dtype) == (2, "uint16")
    assert p.nodata_share == pytest.approx(5 / 16)
    assert p.value_min == pytest.approx(0.005)
    assert p.value_max == pytest.approx(1.2)
    assert p.class_codes is None
    assert p.finite


def test_profile_float_with_nan_and_inf() -> None:
    raw = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    raw[0, 0, :2] = np.nan
    raw[0, 1, 0] = np.inf
    raw[0, 1, 1] = -np.inf
    raw[0, 3, 3] = -9999.0
    p = profile_array("f.tif", raw, nodata=-9999.0, scale=2.0, offset=1.0, crs=None)
    assert p.crs is None
    assert p.nodata_share == pytest.approx(3 / 16)
    assert not p.finite
    assert (p.value_min, p.value_max) == (2 * 2.0 + 1.0, 14 * 2.0 + 1.0)


def test_profile_nan_nodata_and_negative_scale() -> None:
    raw = np.array([[[1.0, 2.0], [np.nan, 4.0]]])
    p = profile_array("n.tif", raw, nodata=float("nan"), scale=-1.0, crs=CRS.from_epsg(4326))
    assert p.crs == "EPSG:4326"
    assert p.nodata_share == pytest.approx(0.25)
    assert (p.value_min, p.value_max) == (-4.0, -1.0)


def test_profile_categorical_codes() -> None:
    raw = np.full((1, 3, 3), 41, dtype=np.uint8)
    raw[0, 0] = [11, 250, 95]
    raw[0, 2, 2] = 7
    p = profile_array("lc.tif", raw, nodata=250, crs="EPSG:5070", categorical=True)
    assert p.class_codes == (7, 11, 41, 95)
    assert p.nodata_share == pytest.approx(1 / 9)
    assert (p.value_min, p.value_max) == (7.0, 95.0)
    out = validate_profiles([p], LANDCOVER)
    assert out == {"lc.tif": [f"class codes [7] not in the class domain {list(NLCD_CODES)}"]}


def test_profile_categorical_refuses_fractional_codes() -> None:
    raw = np.array([[[1.0, 2.5]]])
    with pytest.raises(ValueError, match=r"non-integer values \[2.5\]"):
        profile_array("c.tif", raw, nodata=None, crs=None, categorical=True)


@pytest.mark.parametrize(
    "raw",
    [
        np.zeros((2, 3, 3), dtype=np.uint16),  # every pixel is nodata
        np.zeros((0, 1, 1), dtype=np.uint16),  # no band read
        np.zeros((1, 0, 5), dtype=np.uint16),  # an empty window
    ],
    ids=["all_nodata", "no_bands", "no_pixels"],
)
def test_profile_without_valid_pixels(raw: np.ndarray) -> None:
    p = profile_array("e.tif", raw, nodata=0, crs="EPSG:32615", categorical=True)
    assert p.nodata_share == 1.0
    assert (p.value_min, p.value_max) == (None, None)
    assert p.class_codes == ()
    assert p.finite


def test_profile_needs_three_dimensions() -> None:
    with pytest.raises(ValueError, match=r"must be \(bands, rows, cols\); got shape \(4, 4\)"):
        profile_array("x.tif", np.zeros((4, 4)), nodata=None, crs=None)


def test_profile_then_validate_end_to_end(validator: SceneValidator) -> None:
    rng = np.random.default_rng(7)
    raw = rng.integers(1, 12000, size=(4, 8, 8), dtype=np.uint16)
    ok = profile_array("ok.tif", raw, nodata=0, scale=0.0001, crs="EPSG:32615")
    hot = raw.copy()
    hot[2, 4, 4] = 17000  # 1.7 reflectance
    bright = profile_array("bright.tif", hot, nodata=0, scale=0.0001, crs="EPSG:32615")
    out = validate_profiles([ok, bright], REFLECTANCE)
    assert out["ok.tif"] == []
    assert out["bright.tif"] == [
        f"values {ok.value_min:.6g}..1.7 outside the allowed range 0.0..1.2"
    ]

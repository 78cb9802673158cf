from __future__ import annotations

from datetime import datetime

import pytest

from tasks.discover import parse_date_from_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("PSScene_20190612_163402_1012_3B_AnalyticMS_SR.tif", datetime(2019, 6, 12, 16, 34, 2)),
        ("S2_20190612T163402_B04.tif", datetime(2019, 6, 12, 16, 34, 2)),
        ("scene_2019-06-12T16:34:02.tif", datetime(2019, 6, 12, 16, 34, 2)),
        ("scene_2019-06-12_16-34-02.tif".replace("-34-02", "3402"), datetime(2019, 6, 12, 16, 34, 2)),
        ("TERRA_MODIS_012010_NDVI_2013-09-14.jp2", datetime(2013, 9, 14)),
        ("LC08_20200115_B4.tif", datetime(2020, 1, 15)),
        ("MOD11A1.A2019182.h10v05.061.LST_Day_1km.tif", datetime(2019, 7, 1)),
        ("MOD13Q1.A2020366.tif", datetime(2020, 12, 31)),
        ("no_date_here.tif", None),
        ("bad_20191345.tif", None),
    ],
)
def test_parse_date_from_name(name: str, expected: datetime | None) -> None:
    assert parse_date_from_name(name) == expected

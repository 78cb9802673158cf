"""Finding scenes: catalog globs, acquisition dates from file names or metadata.

A ``SceneRef`` is one date of one file: most rasters hold one date, a NetCDF with a time
dimension holds several (one ref per time step). A product stored one file per band (Landsat,
Sentinel-2, HLS; the source's ``band_files``) gives one ref per group of band files.
"""

from __future__ import annotations

import calendar
import fnmatch
import functools
import glob as globmod
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

import rasterio
from rasterio.errors import RasterioIOError
from tqdm.auto import tqdm

from tasks.catalog import Catalog, DateRule, SourceSpec
from tasks.cube import RASTER_SUFFIXES, SPATIAL_DIM_NAMES
from tasks.errors import SceneError

__all__ = ["redact_url", "url_secrets", "SceneRef", "band_file_groups", "date_in_name", "file_name", "file_stamp", "is_remote", "sibling", "sidecar_of", "band_of", "date_in_folders", "date_stack", "stack_variables", "unreadable", "discover", "StrayRasters", "unmatched_rasters", "parse_date_from_name", "scene_refs_for_file"]

log = logging.getLogger(__name__)

# A scene GDAL reads over the network: a URL (https://, s3://, gs://, az://) or a /vsi... path.
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.\-]*://|/vsi[a-z0-9_]+/)", re.IGNORECASE)
HTTP_TIMEOUT_S = 20


#: query parameters of signed or tokened URLs (S3 / GCS presigned, Azure SAS, bearer tokens, keys)
_SECRET_QUERY = re.compile(r"^(x-amz-(signature|credential|security-token)|x-goog-(signature|credential)|sig|"
                           r"signature|token|access_token|api_key|apikey|key|password|passwd|pwd|auth|"
                           r"authorization|secret|client_secret)$", re.IGNORECASE)
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*://", re.IGNORECASE)


def _inner_url(path: str) -> tuple[str, str, str] | None:
    """``(before, url, after)``: the URL inside ``path`` (itself, or behind GDAL's ``/vsicurl/``,
    ``/vsizip//vsicurl/`` ...), or inside ``/vsicurl?url=...`` options (then ``before`` is those
    options' prefix and ``after`` the rest, the URL percent-decoded); None without one."""
    from urllib.parse import parse_qsl

    if path.lower().startswith("/vsicurl?"):
        options = parse_qsl(path[len("/vsicurl?"):], keep_blank_values=True)
        url = next((v for k, v in options if k == "url"), None)
        return ("/vsicurl?", url, "") if url else None
    found = _SCHEME.search(path)
    return (path[:found.start()], path[found.start():], "") if found else None


def url_secrets(path: str) -> list[str]:
    """What in a URL (or a GDAL ``/vsicurl/`` path) is a credential: ``"userinfo"`` for a
    ``user:password@`` (or ``token@``) part, and the names of query parameters that sign or
    authorise it (``X-Amz-Signature``, ``sig``, ``token`` ...)."""
    from urllib.parse import parse_qsl, urlsplit

    inner = _inner_url(path)
    if inner is None:
        return []
    parts = urlsplit(inner[1])
    found = ["userinfo"] if "@" in parts.netloc else []
    found += [k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if _SECRET_QUERY.match(k)]
    if inner[0] == "/vsicurl?":  # GDAL's own options beside the URL (a header with a token)
        found += [k for k, _ in parse_qsl(path[len("/vsicurl?"):], keep_blank_values=True) if _SECRET_QUERY.match(k)]
    return found


def redact_url(path: str) -> str:
    """``path`` with the credentials :func:`url_secrets` finds replaced by ``***`` (for messages and logs)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    inner = _inner_url(path)
    if inner is None or not url_secrets(path):
        return path

    def hide(query: str) -> str:
        return urlencode([(k, "***" if _SECRET_QUERY.match(k) else v)
                          for k, v in parse_qsl(query, keep_blank_values=True)], safe="*:/")

    parts = urlsplit(inner[1])
    netloc = parts.netloc if "@" not in parts.netloc else "***@" + parts.netloc.rsplit("@", 1)[1]
    url = urlunsplit((parts.scheme, netloc, parts.path, hide(parts.query), parts.fragment))
    if inner[0] == "/vsicurl?":
        options = [(k, url if k == "url" else "***" if _SECRET_QUERY.match(k) else v)
                   for k, v in parse_qsl(path[len("/vsicurl?"):], keep_blank_values=True)]
        return "/vsicurl?" + urlencode(options, safe="*:/")
    return inner[0] + url


def is_remote(path: str) -> bool:
    """True for a URL or a GDAL virtual file system path (read by GDAL, not from the disk)."""
    return bool(_REMOTE.match(path))


# Archives products are delivered in (Copernicus .SAFE.zip, USGS Landsat .tar), read through GDAL's
# /vsizip/ and /vsitar/ without unpacking.
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
_ARCHIVE_MEMBER = re.compile(r"^/vsi(?:zip|tar)/(.+?\.(?:zip|tar|tar\.gz|tgz))(?:/|$)", re.IGNORECASE)
_ARCHIVE_SPLIT = re.compile(r"(?<=\.zip)/|(?<=\.tar)/|(?<=\.tar\.gz)/|(?<=\.tgz)/", re.IGNORECASE)


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def archive_of(path: str) -> str | None:
    """The local archive a ``/vsizip/`` or ``/vsitar/`` member path is in, else None."""
    m = _ARCHIVE_MEMBER.match(path)
    return m[1] if m else None


def archive_members(archive: str) -> list[str]:
    """GDAL paths (``/vsizip/ARCHIVE/member``) of the raster files inside a local archive."""
    path = Path(archive).resolve()
    st = path.stat()
    return list(_members(str(path), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _members(archive: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    import tarfile
    import zipfile

    try:
        if archive.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                names, vsi = [i.filename for i in z.infolist() if not i.is_dir()], "vsizip"
        else:
            with tarfile.open(archive) as t:
                names, vsi = [m.name for m in t.getmembers() if m.isfile()], "vsitar"
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise SceneError(archive, f"cannot be read as an archive ({exc})") from exc
    return tuple(f"/{vsi}/{archive}/{n}" for n in sorted(names) if n.lower().endswith(RASTER_SUFFIXES))


def file_name(path: str) -> str:
    """The last part of a local path or a URL (query string dropped)."""
    return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else Path(path).name


def sibling(path: str, name: str) -> str:
    """``name`` in the folder of ``path``, local or remote."""
    if is_remote(path):
        return path.split("?", 1)[0].rsplit("/", 1)[0] + "/" + name
    return str(Path(path).with_name(name))


def sidecar_of(path: str, pattern: str, replacement: str) -> str | None:
    """The file beside ``path`` whose name is ``path``'s with ``pattern`` -> ``replacement``
    (a mask / UDM / QA sidecar), or None when the pattern does not match the name.

    A local sidecar that is not in ``path``'s folder but in exactly one folder beside it is taken
    from there: a Sentinel-2 SAFE keeps ``..._SCL_20m.jp2`` in ``R20m/``, beside the 10 m bands'
    ``R10m/``."""
    name = file_name(path)
    new = re.sub(pattern, replacement, name)
    if new == name:
        return None
    beside = sibling(path, new)
    archive = archive_of(path)
    if archive is not None:
        members = archive_members(archive)
        if beside in members:
            return beside
        up = _folder(_folder(path))
        found = [m for m in members if file_name(m) == new and _folder(_folder(m)) == up]
        return found[0] if len(found) == 1 else beside
    if is_remote(path) or Path(beside).exists():
        return beside
    found = [str(f) for f in Path(path).parent.parent.glob(f"*/{globmod.escape(new)}")]
    return found[0] if len(found) == 1 else beside


def band_of(path: str, pattern: re.Pattern[str]) -> tuple[str, str] | None:
    """(scene key, band) of a band file: the band is the pattern's ``band`` group in the file's
    name, the key that name with the match cut out, qualified by the file's folder when the name
    carries no date (the item folders of a STAC download each hold ``B02.tif``, ``B03.tif``, ...):
    one key per scene. None when the pattern does not match."""
    name = file_name(path)
    m = pattern.search(name)
    if m is None or m["band"] is None:
        return None
    key = name[: m.start()] + "{band}" + name[m.end():]
    if date_in_name(key) is None:
        key = _folder(path) + "/" + key
    return key, m["band"]


def _folder(path: str) -> str:
    return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[0] if is_remote(path) else str(Path(path).parent)


def date_in_folders(path: str, *, levels: int = 3) -> datetime | None:
    """The acquisition date in the names of the folders holding ``path``, nearest first (a STAC
    item folder ``S2B_33UUP_20230612_0_L2A/B02.tif``, a ``2023-06-12/`` folder). A day of year
    counts only as MODIS writes it, ``A2019182``: seven bare digits in a folder name are more
    often a run, order or job number (``order_2024001/``) than a date."""
    folder = _folder(path)
    parts = folder.split("/")[3:] if is_remote(path) else list(Path(folder).parts)
    for part in reversed(parts[-levels:]):
        found = date_in_name(part, bare_doy=False)
        if found is not None:
            return found[0]
    return None


def file_stamp(path: str) -> dict[str, int]:
    """Size and modification time of a scene file: a changed file is a new scene. A remote one
    gets them from an HTTP HEAD (an object store's objects are immutable: without HTTP, a fixed
    stamp, so an ingested URL is not read again)."""
    local = archive_of(path) or (None if is_remote(path) else path)
    if local is not None:  # a file, or a member of a local archive (stamped by the archive)
        st = Path(local).stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if path.lower().startswith(("http://", "https://")):
        import urllib.request
        from email.utils import parsedate_to_datetime

        try:
            with urllib.request.urlopen(urllib.request.Request(path, method="HEAD"), timeout=HTTP_TIMEOUT_S) as r:
                size = int(r.headers.get("Content-Length") or -1)
                modified = r.headers.get("Last-Modified")
                mtime = int(parsedate_to_datetime(modified).timestamp() * 1e9) if modified else 0
                return {"size": size, "mtime_ns": mtime}
        except (OSError, ValueError) as exc:
            log.debug("%s: no HEAD stamp (%s)", path, exc)
    return {"size": -1, "mtime_ns": 0}


@dataclass(frozen=True)
class SceneRef:
    """One date of one file.

    ``datasets`` lists the GDAL dataset names holding the source's bands: the file itself, or for a
    NetCDF with one variable per band, its subdatasets, or for a product stored one file per band,
    the band files in the source's band order (``path`` is then the first band's file). ``time_index`` selects the GDAL band of a
    multi-date NetCDF variable (0-based), None for single-date files.
    """

    path: str
    date: datetime | None
    source: str
    datasets: tuple[str, ...] = ()
    time_index: int | None = None
    mask_path: str | None = None

    @property
    def id(self) -> str:
        name = file_name(self.path)
        return name if self.time_index is None else f"{name}#t{self.time_index}"

    @property
    def band_files(self) -> bool:
        """One file per band (not one file, nor a NetCDF / HDF file's variables)."""
        return len(self.datasets) > 1 and not self.datasets[0].lower().startswith(("netcdf:", "hdf5:", "hdf4"))

    @cached_property
    def grid_dataset(self) -> str:
        """The dataset whose pixel grid the scene is read on: the file, its first variable, or for
        band files the finest band (Sentinel-2's 10 m bands, not its 20 m or 60 m ones); looked
        up once per ref."""
        if not self.band_files:
            return self.datasets[0] if self.datasets else self.path
        sizes = [pixel_area(d) or float("inf") for d in self.datasets]  # an unreadable one: its read reports it
        return self.datasets[sizes.index(min(sizes))]

    def file_stamp(self) -> dict[str, int]:
        """Size and modification time: a changed file is a new scene. For band files, their total
        size and latest time, so a scene once refused for a missing band is taken when it arrives."""
        files = list(self.datasets) if self.band_files else [self.path]
        stamps = [file_stamp(f) for f in files]
        return {"size": sum(s["size"] for s in stamps), "mtime_ns": max(s["mtime_ns"] for s in stamps)}


# Most specific first: extended and basic date-times, extended and basic dates, year + day-of-year.
_NAME_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?<!\d)(\d{4}-\d{2}-\d{2})[T_ ](\d{2}):?(\d{2}):?(\d{2})(?!\d)"), "ext-dt"),
    (re.compile(r"(?<!\d)(\d{8})[T_](\d{6})(?!\d)"), "basic-dt"),
    (re.compile(r"(?<!\d)(\d{4}-\d{2}-\d{2})(?!\d)"), "ext-d"),
    (re.compile(r"(?<!\d)(\d{8})(?!\d)"), "basic-d"),
    (re.compile(r"(?<![0-9])A?(\d{4})(\d{3})(?!\d)"), "doy"),
)


def date_stack(descriptions: tuple[str | None, ...]) -> list[tuple[datetime, list[int]]] | None:
    """The layout of a file whose bands are dates (a time series stacked into one file, as Earth
    Engine's ``toBands()`` exports it: descriptions ``20190101_NDVI``, ``20190101_EVI``,
    ``20190117_NDVI``, ...): ``[(date, [GDAL band of each variable])]`` in date order, the variables
    in the order they first appear (:func:`stack_variables`). None unless every band's description
    holds a date, there are two dates or more and each holds every variable once."""
    if len(descriptions) < 2:
        return None
    cells: dict[datetime, dict[str, int]] = {}
    order: list[str] = []
    for i, desc in enumerate(descriptions):
        found = date_in_name(desc or "")
        if found is None:
            return None
        variable = _variable(desc or "", found[1])
        if variable in cells.setdefault(found[0], {}):
            return None
        cells[found[0]][variable] = i + 1
        if variable not in order:
            order.append(variable)
    if len(cells) < 2 or any(len(v) != len(order) for v in cells.values()):
        return None
    return [(d, [cells[d][v] for v in order]) for d in sorted(cells)]


def stack_variables(descriptions: tuple[str | None, ...]) -> list[str]:
    """The variable names of a :func:`date_stack` file (a description with its date cut out, e.g.
    ``NDVI``; ``value`` when nothing is left), in the order they first appear."""
    names: list[str] = []
    for desc in descriptions:
        found = date_in_name(desc or "")
        name = _variable(desc or "", found[1]) if found else str(desc)
        if name not in names:
            names.append(name)
    return names


def _variable(description: str, span: tuple[int, int]) -> str:
    return (description[: span[0]] + description[span[1]:]).strip("_-. ") or "value"


def _plausible(d: datetime) -> datetime | None:
    """A date a scene may have (historic air photos back to 1900): a run of digits that parses as a
    date outside that is most likely an order or job number."""
    return d if 1900 <= d.year <= 2100 else None


def parse_date_from_name(name: str) -> datetime | None:
    """Acquisition date from a file name: ISO 8601 basic/extended dates and date-times, YYYYDDD.

    >>> parse_date_from_name("PSScene_20190612_163402_1012_3B_AnalyticMS_SR.tif")
    datetime.datetime(2019, 6, 12, 16, 34, 2)
    >>> parse_date_from_name("MOD11A1.A2019182.h10v05.061.LST_Day_1km.tif")
    datetime.datetime(2019, 7, 1, 0, 0)
    """
    found = date_in_name(name)
    return found[0] if found else None


def date_in_name(name: str, *, bare_doy: bool = True) -> tuple[datetime, tuple[int, int]] | None:
    """The acquisition date in a file name (as :func:`parse_date_from_name`) and where it is;
    without ``bare_doy``, a ``YYYYDDD`` day of year only with MODIS's ``A`` before it."""
    stem = file_name(name)
    for pattern, kind in _NAME_PATTERNS:
        for m in pattern.finditer(stem):
            if kind == "doy" and not bare_doy and not m[0].startswith("A"):
                continue
            try:
                if kind == "ext-dt":
                    d = datetime.strptime(f"{m[1]} {m[2]}{m[3]}{m[4]}", "%Y-%m-%d %H%M%S")
                elif kind == "basic-dt":
                    d = datetime.strptime(f"{m[1]}{m[2]}", "%Y%m%d%H%M%S")
                elif kind == "ext-d":
                    d = datetime.strptime(m[1], "%Y-%m-%d")
                elif kind == "basic-d":
                    d = datetime.strptime(m[1], "%Y%m%d")
                else:
                    doy = int(m[2])
                    if not 1 <= doy <= 365 + calendar.isleap(int(m[1])):  # day 366 only in a leap year
                        continue
                    d = datetime(int(m[1]), 1, 1) + timedelta(days=doy - 1)
            except ValueError:
                continue
            if _plausible(d):
                return d, m.span()
    return None


#: tags naming a scene's acquisition time (GDAL metadata of products and of xarray / CF exports)
_META_KEYS = ("ACQUISITIONDATETIME", "ACQUISITION_DATE", "DATE_ACQUIRED", "time")
#: the TIFF's own date: the time the file was made (TIFF 6.0), taken only when nothing else dates it
_FILE_DATE_KEY = "TIFFTAG_DATETIME"


def _parse_meta_value(value: str) -> datetime | None:
    """A date or date-time as tags and CF units write it: ISO 8601 (basic or extended, ``T`` or a
    space, fractions, ``Z``, ``UTC`` or an offset such as ``+02:00`` / ``-05:00``, which is applied:
    the result is naive UTC), TIFF's ``2019:06:01 15:30:45``, and one-digit fields as NCEP writes
    them (``1800-01-01 00:00:0.0``); None when it is none of those."""
    text = value.strip()
    text = re.sub(r"^(\d{4}):(\d{2}):(\d{2})(?=[ T]|$)", r"\1-\2-\3", text)  # TIFF / EXIF
    text = re.sub(r"\s*(UTC|GMT)$", "+00:00", text, flags=re.IGNORECASE)
    text = re.sub(r"^(\d{4}-\d{1,2}-\d{1,2})[ T](\d{1,2}):(\d{1,2}):(\d{1,2})(?=[.,\s+\-Z]|$)",  # 0:0:0.0
                  lambda m: f"{m[1]} {int(m[2]):02d}:{int(m[3]):02d}:{int(m[4]):02d}", text)
    text = re.sub(r"^(\d{4})-(\d{1,2})-(\d{1,2})", lambda m: f"{m[1]}-{int(m[2]):02d}-{int(m[3]):02d}", text)
    text = re.sub(r"\s+([+-]\d{2}:?\d{2})$", r"\1", text)  # "00:00:00 -05:00"
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # nanoseconds: microseconds are plenty
    try:
        d = datetime.fromisoformat(text)
    except ValueError:
        return None
    if d.tzinfo is not None:
        d = d.astimezone(UTC).replace(tzinfo=None)
    return d


def _date_from_tags(tags: dict[str, str], path: str = "") -> datetime | None:
    """The acquisition date in a file's tags (:data:`_META_KEYS`); a tag of those that holds no
    date it can read is an error naming it, not a reason to take another. Else the TIFF's own
    date, with a warning that it is when the file was made."""
    for key in _META_KEYS:
        for k, v in tags.items():
            name = k.rpartition("#")[2].upper()  # NC_GLOBAL#time -> TIME
            if name == _FILE_DATE_KEY or (key == "time" and name not in ("TIME", "DATETIME")):
                continue  # a PROCESSING_TIME, a SCENE_CENTER_TIME, a file's own date: not its acquisition
            if name.endswith(key.upper()):
                d = _parse_meta_value(v)
                if d is None and key != "time":  # "...time" tags may hold a time of day, or anything
                    raise SceneError(path, f"its tag {k}={v!r} is no date fusioncube reads (ISO 8601); give the "
                                           "dates another way (--date-pattern on the file names, or --date)")
                if d is not None:
                    return d
    for k, v in tags.items():
        if k.upper() == _FILE_DATE_KEY and (d := _parse_meta_value(v)) is not None:
            log.warning("%s: dated by its %s (%s), the time the file was made: if that is not when it was "
                        "acquired, give the dates another way (--date-pattern on the file names, or --date)",
                        file_name(path), k, v)
            return d
    return None


#: CF calendars read as the proleptic Gregorian calendar (the same dates after 1582)
_GREGORIAN = {"standard", "gregorian", "proleptic_gregorian", ""}
_NOLEAP_MONTHS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _noleap_dates(base: datetime, days: list[float]) -> list[datetime]:
    """``days`` after ``base`` counted in CF's ``noleap`` / ``365_day`` calendar (every year 365 days,
    no 29 February): each a date of the real calendar (all of those exist in it)."""
    import itertools

    starts = [0, *itertools.accumulate(_NOLEAP_MONTHS)]
    origin = base.year * 365 + starts[base.month - 1] + base.day - 1
    seconds = base.hour * 3600 + base.minute * 60 + base.second + base.microsecond / 1e6
    out = []
    for n in days:
        total = (origin + seconds / 86400 + n) * 86400
        day, second = divmod(round(total * 1e6), 86_400_000_000)
        year, within = divmod(day, 365)
        month = next(i for i in range(12) if within < starts[i + 1])
        out.append(datetime(year, month + 1, within - starts[month] + 1) + timedelta(microseconds=second))
    return out


def _netcdf_times(tags: dict[str, str], path: str = "") -> list[datetime] | None:
    """Dates of a NetCDF variable's time dimension, from GDAL's ``NETCDF_DIM_<dim>_VALUES`` and the
    dimension's CF units (``days since 2019-01-01``): the dates of its GDAL bands, in band order.

    None when the variable has no dimension beyond y / x with such units. A time dimension beside
    another one (``time`` x ``level``) raises ``SceneError``: its GDAL bands would mix the two.
    """
    extra = _netcdf_extra_dims(tags)
    timed = [d for d in extra if re.match(r"\s*\w+\s+since\s", tags.get(f"{d}#units", ""))]
    if not timed:
        return None
    if len(extra) > 1:
        raise SceneError(path, f"a NetCDF variable with dimensions {extra} beyond y / x: its GDAL bands mix "
                               f"them; select one {next((d for d in extra if d not in timed), extra[-1])!r} first (e.g. "
                               "xarray's .sel(...).to_netcdf, or gdal_translate -b)")
    dim = timed[0]
    values, units = tags.get(f"NETCDF_DIM_{dim}_VALUES"), tags[f"{dim}#units"]
    m = re.match(r"\s*(\w+)\s+since\s+(.+)", units)
    per_day = {"second": 86400, "seconds": 86400, "minute": 1440, "minutes": 1440, "hour": 24, "hours": 24,
               "day": 1, "days": 1}.get(m[1].lower()) if m else None
    base = _parse_meta_value(m[2]) if m else None
    if per_day is None or base is None:
        raise SceneError(path, f"its time axis {dim!r} is in {units!r}, which fusioncube does not read (it reads "
                               "seconds, minutes, hours or days since an ISO 8601 date); convert its time units "
                               "first, e.g. `cdo settunits,days IN.nc OUT.nc`")
    if not values:
        return None
    calendar_name = tags.get(f"{dim}#calendar", "").strip().lower()
    days = [float(v) / per_day for v in values.strip("{}").split(",") if v.strip()]
    if calendar_name in ("noleap", "365_day"):
        return _noleap_dates(base, days)
    if calendar_name not in _GREGORIAN:
        raise SceneError(path, f"its time axis {dim!r} counts in the {calendar_name!r} calendar, whose dates are "
                               "not all dates of the real one (30 February in 360_day); convert it first, e.g. "
                               "xarray's ds.convert_calendar('standard', align_on='date')")
    return [base + timedelta(days=n) for n in days]


def _netcdf_extra_dims(tags: dict[str, str]) -> list[str]:
    """A NetCDF variable's dimensions beyond the two GDAL reads as its raster (``NETCDF_DIM_EXTRA``)."""
    return [d.strip() for d in tags.get("NETCDF_DIM_EXTRA", "").strip("{}").split(",") if d.strip()]


def netcdf_axes_error(path: str, tags: dict[str, str]) -> SceneError | None:
    """GDAL reads a NetCDF variable's last two dimensions as its raster: a variable stored as
    (lat, lon, time) comes out as lon x time. The error naming the fix, when a spatial dimension
    is among the others (``NETCDF_DIM_EXTRA``); None when the layout is right."""
    spatial = [d for d in _netcdf_extra_dims(tags) if SPATIAL_DIM_NAMES.get(d.lower()) in ("y", "x")
               or tags.get(f"{d}#units", "").lower() in ("degrees_north", "degrees_east", "degree_north", "degree_east")]
    if not spatial:
        return None
    return SceneError(path, f"its variable's dimension {spatial[0]!r} is not among its last two, which GDAL reads "
                            "as the raster: store it with y and x last, e.g. xarray's ds.transpose(..., "
                            f"{spatial[0]!r}, <x dimension>).to_netcdf(...)")


def netcdf_time_bands(ds: rasterio.io.DatasetReader) -> list[datetime] | None:
    """The dates of a one-variable NetCDF whose GDAL bands are its time steps, else None. Each date
    is then a scene of one band, the variable."""
    if ds.driver != "netCDF" or ds.subdatasets:
        return None
    times = _netcdf_times(ds.tags(), ds.name)
    return times if times is not None and len(times) == ds.count else None


def _mask_path(path: str, spec: SourceSpec, band_files: tuple[str, ...] | None = None) -> str | None:
    """The mask sidecar of a scene: of its file, or of the first of its band files whose name the
    sidecar pattern matches (AppEEARS' QC layer belongs to LST, not to the emissivity beside it)."""
    if spec.mask is None or spec.mask.sidecar is None:
        return None
    for f in band_files or (path,):
        mask = sidecar_of(f, spec.mask.sidecar.pattern, spec.mask.sidecar.replacement)
        if mask is not None:
            return mask
    raise SceneError(
        path, f"mask sidecar pattern {spec.mask.sidecar.pattern!r} does not match the file name"
              + (" of any of its band files" if band_files else "")
    )


_HDF4_MAGIC = b"\x0e\x03\x13\x01"


def unreadable(path: str, exc: Exception) -> str:
    """Why GDAL cannot read ``path``, with the way out where one is known (HDF4)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if head == _HDF4_MAGIC:
        return ("is HDF4 (MODIS / VIIRS .hdf), which this GDAL build (rasterio's wheels) cannot read; "
                "convert the layers you need with `gdal_translate HDF4_EOS:EOS_GRID:\"FILE\":GRID:SDS out.tif` "
                "where GDAL has HDF4, or use the product's GeoTIFF / NetCDF / HDF5 edition")
    return f"cannot be read by GDAL ({exc})"


def band_file_groups(
    files: list[str], spec: SourceSpec
) -> tuple[list[tuple[str, ...]], list[tuple[str, str]]]:
    """Group one-file-per-band products into scenes: ([band files in band order], [(path, reason)]).

    Files whose names differ only where ``spec.band_files`` matches are one scene. A file
    the pattern does not match, or whose band is not one of the source's, is reported, not read; a
    scene missing a band, or with two files for one band, is reported under its first file.
    """
    if spec.band_files is None:
        raise ValueError("source has no band_files pattern")
    pattern = re.compile(spec.band_files)
    wanted = [b.file for b in spec.bands if b.file is not None]  # every band has one (SourceSpec)
    groups: dict[str, dict[str, list[str]]] = {}
    failed: list[tuple[str, str]] = []
    for f in files:
        found = band_of(f, pattern)
        if found is None:
            failed.append((f, "not a band file: no band name where the source's band_files pattern looks; "
                              "narrow the glob to the band files"))
            continue
        key, band = found
        if band in spec.unused_band_files:
            continue
        if band not in wanted:
            failed.append((f, f"band file {band!r} is not one of the source's bands {wanted}"))
            continue
        groups.setdefault(key, {}).setdefault(band, []).append(f)
    scenes: list[tuple[str, ...]] = []
    for by_band in groups.values():
        first = min(p for ps in by_band.values() for p in ps)
        missing = [b for b in wanted if b not in by_band]
        if missing:
            failed.append((first, f"scene lacks the file(s) of band(s) {missing} (found {sorted(by_band)})"))
            continue
        chosen = {b: ps[0] if len(ps) == 1 else _finest(ps) for b, ps in by_band.items()}
        tied = [b for b in wanted if chosen[b] is None]
        if tied:
            ps = by_band[tied[0]]
            names = [file_name(p) for p in ps]
            shown = names if len(set(names)) == len(names) else ps  # one file in two places: where
            failed.append((first, f"two files for band {tied[0]!r} and no one finest among them: "
                                  f"{shown}; narrow the glob"))
        else:
            scenes.append(tuple(str(chosen[b]) for b in wanted))
    return scenes, failed


def pixel_area(path: str) -> float | None:
    """A raster's pixel area in its CRS units, None when it cannot be read."""
    try:
        with rasterio.open(path) as ds:
            return abs(ds.transform.a * ds.transform.e)
    except RasterioIOError:
        return None


def _finest(paths: list[str]) -> str | None:
    """Of one band's files at several resolutions (a Sentinel-2 SAFE has B02 in ``R10m/``,
    ``R20m/`` and ``R60m/``), the one with the finest pixels; None when two tie for it or one
    cannot be read."""
    sizes = [s for s in (pixel_area(p) for p in paths) if s is not None]
    if len(sizes) < len(paths):
        return None
    best = min(sizes)
    return paths[sizes.index(best)] if sizes.count(best) == 1 else None


def scene_refs_for_file(
    path: str, source: str, spec: SourceSpec, band_files: tuple[str, ...] | None = None
) -> list[SceneRef]:
    """The scene refs of one file (or of one group of band files, ``path`` the first);
    raises ``SceneError`` when it cannot be read or dated."""
    try:
        with rasterio.open(path) as ds:
            subdatasets = list(ds.subdatasets)
            tags = ds.tags()
            stack = None if subdatasets or band_files else date_stack(ds.descriptions)
            if subdatasets:
                with rasterio.open(subdatasets[0]) as sub:
                    tags = {**tags, **sub.tags()}
            times = netcdf_time_bands(ds) if not (subdatasets or band_files) else None
    except RasterioIOError as exc:
        raise SceneError(path, unreadable(path, exc)) from exc
    if (axes := netcdf_axes_error(path, tags)) is not None:
        raise axes
    datasets = band_files or (tuple(subdatasets) if subdatasets else (path,))
    if band_files and subdatasets:
        raise SceneError(path, "a band file holds subdatasets (NetCDF / HDF variables); band_files takes plain rasters")
    mask = _mask_path(path, spec, band_files)
    if spec.static:
        return [SceneRef(path, None, source, datasets, None, mask)]
    rule: DateRule = spec.date
    if subdatasets:
        times = _netcdf_times(tags, path)
    if times and rule.from_ != "filename" and len(times) > 1:
        return [SceneRef(path, t, source, datasets, i, mask) for i, t in enumerate(times)]
    if times and rule.from_ != "filename" and not rule.pattern:  # one step: its time axis, before its name
        return [SceneRef(path, times[0], source, datasets, 0, mask)]
    if stack is not None and rule.from_ != "filename" and not rule.pattern:  # bands are dates
        return [SceneRef(path, t, source, datasets, i, mask) for i, (t, _) in enumerate(stack)]
    date: datetime | None = None
    if rule.pattern:
        m = re.search(rule.pattern, file_name(path))
        if m is None:
            raise SceneError(path, f"the date pattern {rule.pattern!r} does not match its name")
        try:
            date = (
                datetime.strptime(m["date"], rule.format)
                if rule.format
                else parse_date_from_name(m["date"])
            )
        except ValueError as exc:
            raise SceneError(path, f"date {m['date']!r} does not match format {rule.format!r}") from exc
        if date is None:
            raise SceneError(path, f"the date pattern matched {m['date']!r}, which is no date fusioncube reads "
                                   "by itself; give its format (date.format, --date-format, e.g. %d%m%Y)")
    elif rule.from_ in ("auto", "filename"):
        date = parse_date_from_name(path)
    if date is None and rule.from_ in ("auto", "metadata"):
        date = times[0] if times else _date_from_tags(tags, path)
    if date is None and rule.from_ in ("auto", "filename") and not rule.pattern:
        date = date_in_folders(path)
    if date is None and rule.default is not None:
        date = datetime(rule.default.year, rule.default.month, rule.default.day)
    if date is None:
        raise SceneError(
            path,
            "no acquisition date in the file name (ISO 8601 date or YYYYDDD), its folders' names or metadata; "
            "give one: date.pattern or date.default in the catalog (fusioncube ingest "
            "--date-pattern REGEX or --date YYYY-MM-DD)",
        )
    return [SceneRef(path, date, source, datasets, 0 if times else None, mask)]


def expand_globs(patterns: list[str], catalog: Catalog | None = None) -> list[str]:
    """Files matched by the patterns (resolved against the catalog's folder), sorted, unique."""
    files: set[str] = set()
    for pattern in patterns:
        if is_remote(pattern):  # a URL names one scene; object stores are not globbed
            files.add(pattern)
            continue
        p = str(catalog.resolve(pattern)) if catalog is not None else pattern
        outer, *inner = _ARCHIVE_SPLIT.split(p, maxsplit=1)  # "DIR/*.zip/*_B02_10m.jp2": members
        for f in globmod.glob(outer, recursive=True):
            if not Path(f).is_file():
                continue
            if not is_archive(f):
                files.add(f)
                continue
            try:
                members = archive_members(f)
            except SceneError:  # kept as a file: its read fails and quarantines it, naming it
                files.add(f)
                continue
            for member in members:
                inside = member.split(f"{Path(f).resolve()}/", 1)[1]
                if not inner or fnmatch.fnmatch(inside, inner[0]) or fnmatch.fnmatch(file_name(inside), inner[0]):
                    files.add(member)
    return sorted(_without_unpacked_twins(files))


def _without_unpacked_twins(files: set[str]) -> set[str]:
    """``files`` less the archive members that were also unpacked beside their archive (a
    ``.SAFE.zip`` and the ``.SAFE`` folder it holds, a Landsat ``.tar`` and its ``.TIF`` files):
    the unpacked file is read, so no band comes twice."""
    local = {str(Path(f).resolve()) for f in files if not is_remote(f)}
    twins = set()
    for f in files:
        archive = archive_of(f)
        if archive is not None:
            inside = f.split(f"{archive}/", 1)[1]
            if str(Path(archive).parent / inside) in local:
                twins.add(f)
    if twins:
        log.info("%d file(s) in archives skipped: read from their unpacked copies beside the archives "
                 "(%s)", len(twins), ", ".join(sorted({Path(str(archive_of(t))).name for t in twins})))
    return files - twins


def glob_roots(patterns: list[str], catalog: Catalog | None = None) -> list[Path]:
    """The folders a source's globs search (each pattern's part before its first wildcard),
    links and ``..`` resolved: a scene must really be inside one of them."""
    roots = []
    for pattern in patterns:
        if is_remote(pattern):
            continue
        p = str(catalog.resolve(pattern)) if catalog is not None else pattern
        cut = min((i for i, c in enumerate(p) if c in "*?["), default=len(p))
        head = p[:cut]
        base = Path(head) if head.endswith("/") else Path(head).parent
        if base.resolve() not in roots:  # one glob per file kind in one folder: the folder once
            roots.append(base.resolve())
    return roots


@dataclass(frozen=True)
class StrayRasters:
    """Raster files of one suffix below a folder whose globs take only other suffixes."""

    root: Path
    suffix: str
    names: list[str]
    taken: list[str]  # the suffixes the folder's globs take


def unmatched_rasters(patterns: list[str], catalog: Catalog | None = None) -> list[StrayRasters]:
    """Raster files below the folders that recursive globs (``DIR/**/*.jp2``) search whose suffix
    no glob of that folder takes, by folder and suffix. ``fusioncube ingest DIR`` writes one glob per
    suffix it found; a new kind of file arriving there later (a GeoTIFF among JPEG 2000 scenes) is
    never matched, and a scheduled run would not say so. A glob without a suffix covers its folder."""
    covered: dict[Path, set[str]] = {}
    for pattern in patterns:
        if is_remote(pattern) or "/**/" not in pattern:
            continue
        p = str(catalog.resolve(pattern)) if catalog is not None else pattern
        root = Path(p.split("/**/", 1)[0])
        if any(c in str(root) for c in "*?[") or not root.is_dir():
            continue
        suffix = Path(p).suffix.lower()
        covered.setdefault(root.resolve(), set()).add(suffix if suffix and not any(c in suffix for c in "*?[") else "*")
    stray: list[StrayRasters] = []
    for root, suffixes in covered.items():
        if "*" in suffixes:
            continue
        found: dict[str, list[str]] = {}
        for f in sorted(root.rglob("*")):
            suffix = f.suffix.lower()
            if suffix in RASTER_SUFFIXES and suffix not in suffixes and f.is_file():
                found.setdefault(suffix, []).append(f.name)
        stray += [StrayRasters(root, suffix, names, sorted(suffixes)) for suffix, names in found.items()]
    return stray


def outside_roots(path: str, roots: list[Path]) -> str | None:
    """Why ``path`` is refused when it resolves outside ``roots`` (a link or ``..``), else None."""
    if is_remote(path):
        return None
    real = Path(path).resolve()
    if any(r == real or r in real.parents for r in roots):
        return None
    how = "a symbolic link" if Path(path).is_symlink() else "a path"
    return (f"is {how} to {real}, outside the source's folders {[str(r) for r in roots]}; "
            "copy the file into the source folder or widen the source's glob")


def _without_mask_sidecars(files: list[str], spec: SourceSpec) -> list[str]:
    """``files`` less those that are another file's mask sidecar (a glob such as ``*.tif`` over a
    Planet order matches its ``_udm2`` files too): they are read as masks, not as scenes."""
    if spec.mask is None or spec.mask.sidecar is None:
        return files
    rule = spec.mask.sidecar
    masks = {sidecar_of(f, rule.pattern, rule.replacement) for f in files}
    return [f for f in files if f not in masks]


def discover(
    catalog: Catalog, source: str, *, skip: Callable[[str], bool] | None = None
) -> tuple[list[SceneRef], list[tuple[str, str]]]:
    """All scenes of a source: (refs sorted by date, [(path, reason)] for files that failed).

    ``skip(path)`` true leaves a file unopened (e.g. already in the cube, unchanged).
    """
    spec = catalog.source(source)
    refs: list[SceneRef] = []
    failed: list[tuple[str, str]] = []
    files = expand_globs(spec.glob, catalog)
    if not files:
        log.warning("source %s: no file matches %s", source, spec.glob)
    roots = glob_roots(spec.glob, catalog)
    inside: list[str] = []
    for f in files:
        escape = outside_roots(f, roots)
        if escape is not None:
            failed.append((f, escape))
        elif is_archive(f):  # expand_globs keeps an archive it cannot open as a file
            try:
                archive_members(f)
            except SceneError as exc:
                failed.append((f, exc.reason))
        else:
            inside.append(f)
    inside = _without_mask_sidecars(inside, spec)
    scenes: list[tuple[str, ...]] = [(f,) for f in inside]
    if spec.band_files is not None:
        scenes, bad = band_file_groups(inside, spec)
        failed += bad
    todo = [g for g in scenes if skip is None or not skip(g[0])]
    # each new file is opened for its date, bands and georeferencing: seconds for hundreds of files
    for group in tqdm(todo, desc=f"discover {source}: open the new files", unit="file", disable=len(todo) < 20):
        try:
            refs.extend(scene_refs_for_file(group[0], source, spec, group if spec.band_files else None))
        except SceneError as exc:
            failed.append((exc.path, exc.reason))
    refs.sort(key=lambda r: (r.date or datetime.min, r.path, r.time_index or 0))
    return refs, failed

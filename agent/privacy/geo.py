"""Location generalization and privacy zones, vectorised over numpy arrays (no per-row Python).

Geohash: a cell of a precision-p geohash is the result of 5p bisections, alternately of longitude
(first) and latitude, so it is a grid of 2^ceil(5p/2) x 2^floor(5p/2) cells over the globe. We
quantize each coordinate to its cell index with integer arithmetic and correct the one-off cases
at cell borders against the exact (dyadic, hence exactly representable) border, so a coordinate on
a border lands where the reference bisection puts it: in the upper cell.

Distances: haversine on the mean-radius sphere (R = 6,371,008.8 m). It is well conditioned for
short distances, has no range limit, no antimeridian or pole special case, and its cost does not
matter because zone tests run only on the rows that carry a fix. The sphere differs from WGS84 by
up to 0.5 %, so a 15 m circle is exact to about 7 cm; give zones a margin larger than the GPS
error anyway. A tolerance of BORDER_TOL_M makes every zone slightly larger, never smaller, so a
point computed to be on the border (up to rounding) is inside.

Polygons are in (lat, lon) with straight edges in the lat/lon plane (plate carree), which for
zones the size of a property is indistinguishable from geodesic edges. A polygon may not cross the
antimeridian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np

EARTH_RADIUS_M = 6_371_008.8
#: Zones are enlarged by this much, so that a point on a zone's border (up to rounding) is inside.
BORDER_TOL_M = 0.01
MAX_GEOHASH = 12
BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"
_BASE32 = np.frombuffer(BASE32.encode(), dtype=np.uint8)
_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0


# -- geohash ---------------------------------------------------------------------------------------

def _bits(precision: int) -> tuple[int, int]:
    """(latitude bits, longitude bits) of a precision: longitude takes the odd bit."""
    if not isinstance(precision, int) or isinstance(precision, bool) or not 1 <= precision <= MAX_GEOHASH:
        raise ValueError(f"geohash precision must be an int in 1..{MAX_GEOHASH}, got {precision!r}")
    total = 5 * precision
    return total // 2, (total + 1) // 2


def _cell_index(v: np.ndarray, lo: int, span: int, bits: int) -> np.ndarray:
    """Cell index of each value on a 2^bits grid over [lo, lo + span]; the top border is in the last cell."""
    n = 1 << bits
    q = np.floor((v - lo) * (n / span))
    i = np.clip(np.nan_to_num(q, nan=0.0), 0, n - 1).astype(np.int64)
    # Borders are lo + i * span / n: an integer over a power of two, exact in float64 (< 2^53).
    low = (i * span + lo * n) / n
    i -= (v < low) & (i > 0)
    high = ((i + 1) * span + lo * n) / n
    i += (v >= high) & (i < n - 1)
    return i


def _centre(i: np.ndarray, lo: int, span: int, bits: int) -> np.ndarray:
    n = 1 << bits
    return ((2 * i + 1) * span + 2 * lo * n) / (2 * n)


def geohash_centre(lat: np.ndarray, lon: np.ndarray, precision: int) -> tuple[np.ndarray, np.ndarray]:
    """The centre of each point's geohash cell; NaN stays NaN. Latitude is clipped to [-90, 90],
    longitude to [-180, 180] (cleaning rejects values outside them)."""
    lat_bits, lon_bits = _bits(precision)
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    la = _centre(_cell_index(lat, -90, 180, lat_bits), -90, 180, lat_bits)
    lo = _centre(_cell_index(lon, -180, 360, lon_bits), -180, 360, lon_bits)
    bad = np.isnan(lat) | np.isnan(lon)
    la[bad] = np.nan
    lo[bad] = np.nan
    return la, lo


def _spread(x: np.ndarray) -> np.ndarray:
    """Bits 0..31 of x to the even bit positions of a uint64 (Morton interleaving)."""
    x = x.astype(np.uint64)
    for shift, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF), (4, 0x0F0F0F0F0F0F0F0F),
                        (2, 0x3333333333333333), (1, 0x5555555555555555)):
        x = (x | (x << np.uint64(shift))) & np.uint64(mask)
    return x


def geohash_encode(lat: np.ndarray, lon: np.ndarray, precision: int) -> np.ndarray:
    """Geohash strings (numpy str array); "" where lat or lon is NaN."""
    lat_bits, lon_bits = _bits(precision)
    lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    ila = _spread(_cell_index(lat, -90, 180, lat_bits))
    ilo = _spread(_cell_index(lon, -180, 360, lon_bits))
    # The first (most significant) bit is longitude's: at an odd position when the bit count is even.
    code = (ilo << np.uint64(1)) | ila if lat_bits == lon_bits else ilo | (ila << np.uint64(1))
    shifts = np.arange(precision - 1, -1, -1, dtype=np.uint64) * np.uint64(5)
    chars = _BASE32[((code[:, None] >> shifts[None, :]) & np.uint64(31)).astype(np.intp)]
    out = np.ascontiguousarray(chars).view(f"S{precision}").ravel().astype(str)
    out[np.isnan(lat) | np.isnan(lon)] = ""
    return out


def geohash_bounds(code: str) -> tuple[float, float, float, float]:
    """(lat_min, lat_max, lon_min, lon_max) of one geohash cell, by bisection (the reference definition)."""
    lat, lon = [-90.0, 90.0], [-180.0, 180.0]
    even = True
    for ch in code:
        v = BASE32.index(ch)
        for b in (16, 8, 4, 2, 1):
            rng = lon if even else lat
            mid = (rng[0] + rng[1]) / 2
            if v & b:
                rng[0] = mid
            else:
                rng[1] = mid
            even = not even
    return lat[0], lat[1], lon[0], lon[1]


def geohash_cell_size_m(precision: int, lat: float = 0.0) -> tuple[float, float]:
    """(height, width) of a cell in metres at latitude ``lat`` (width shrinks with cos(lat))."""
    lat_bits, lon_bits = _bits(precision)
    return (180.0 / (1 << lat_bits) * _M_PER_DEG,
            360.0 / (1 << lon_bits) * _M_PER_DEG * math.cos(math.radians(lat)))


def snap_grid(v: np.ndarray, cell_m: float) -> np.ndarray:
    """The centre of each value's cell on a grid of ``cell_m`` with a border at 0; NaN stays NaN."""
    if not cell_m > 0:
        raise ValueError(f"grid cell must be > 0, got {cell_m!r}")
    return (np.floor(np.asarray(v, dtype=np.float64) / cell_m) + 0.5) * cell_m


def snap_step(v: np.ndarray, step: float) -> np.ndarray:
    """Each value rounded to the nearest multiple of ``step`` (ties to even); NaN stays NaN."""
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step!r}")
    return np.round(np.asarray(v, dtype=np.float64) / step) * step


# -- zones -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Circle:
    """A geofence: every point within ``radius_m`` of (lat, lon)."""

    name: str
    lat: float
    lon: float
    radius_m: float


@dataclass(frozen=True)
class Polygon:
    """A geofence given by its vertices [(lat, lon), ...] (closed implicitly)."""

    name: str
    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if len(self.points) < 3:
            raise ValueError("a polygon needs at least 3 points")
        lons = [p[1] for p in self.points]
        if max(lons) - min(lons) > 180.0:
            raise ValueError("a polygon may not span more than 180 degrees of longitude (antimeridian)")


@dataclass(frozen=True)
class SiteCircle:
    """A zone in the robot's site frame: within ``radius_m`` of (x_m, y_m)."""

    name: str
    x_m: float
    y_m: float
    radius_m: float


@dataclass(frozen=True)
class SiteRect:
    """A zone in the site frame: x_min <= x <= x_max and y_min <= y <= y_max."""

    name: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float


Zone = Union[Circle, Polygon, SiteCircle, SiteRect]


def is_site_zone(zone: Zone) -> bool:
    """Site-frame zones test x_m/y_m; the others test lat/lon."""
    return isinstance(zone, (SiteCircle, SiteRect))


def haversine_m(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    """Great-circle distance in metres from (lat0, lon0) to each point."""
    p1, p2 = np.radians(lat), math.radians(lat0)
    a = (np.sin((p1 - p2) / 2) ** 2
         + np.cos(p1) * math.cos(p2) * np.sin(np.radians(np.asarray(lon) - lon0) / 2) ** 2)
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


def _in_polygon(zone: Polygon, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Even-odd ray casting along +lon, plus 'on an edge' (within BORDER_TOL_M), both vectorised."""
    inside = np.zeros(lat.shape, dtype=bool)
    on_edge = np.zeros(lat.shape, dtype=bool)
    kx = _M_PER_DEG * np.cos(np.radians(lat))  # metres per degree of longitude at each point
    pts = zone.points
    with np.errstate(invalid="ignore", divide="ignore"):
        for (ya, xa), (yb, xb) in zip(pts, pts[1:] + pts[:1]):
            if ya != yb:  # a horizontal edge is never crossed by a horizontal ray
                crosses = (ya > lat) != (yb > lat)
                x_at = xa + (lat - ya) * (xb - xa) / (yb - ya)
                inside ^= crosses & (lon < x_at)
            # Distance to the segment in local metres.
            ex, ey = (xb - xa) * kx, (yb - ya) * _M_PER_DEG
            px, py = (lon - xa) * kx, (lat - ya) * _M_PER_DEG
            den = ex * ex + ey * ey
            t = np.clip(np.where(den > 0, (px * ex + py * ey) / np.where(den > 0, den, 1.0), 0.0), 0.0, 1.0)
            on_edge |= np.hypot(px - t * ex, py - t * ey) <= BORDER_TOL_M
    return inside | on_edge


def zone_mask(zone: Zone, lat: np.ndarray, lon: np.ndarray, x_m: np.ndarray, y_m: np.ndarray) -> np.ndarray:
    """True where the point is inside ``zone`` (border included); False where its coordinates are NaN."""
    with np.errstate(invalid="ignore"):
        if isinstance(zone, Circle):
            return haversine_m(lat, lon, zone.lat, zone.lon) <= zone.radius_m + BORDER_TOL_M
        if isinstance(zone, Polygon):
            return _in_polygon(zone, np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64))
        if isinstance(zone, SiteCircle):
            return np.hypot(x_m - zone.x_m, y_m - zone.y_m) <= zone.radius_m + BORDER_TOL_M
        if isinstance(zone, SiteRect):
            return ((x_m >= zone.x_min - BORDER_TOL_M) & (x_m <= zone.x_max + BORDER_TOL_M)
                    & (y_m >= zone.y_min - BORDER_TOL_M) & (y_m <= zone.y_max + BORDER_TOL_M))
    raise TypeError(f"not a zone: {zone!r}")


def in_zones(zones: tuple[Zone, ...] | list[Zone], lat: np.ndarray, lon: np.ndarray,
             x_m: np.ndarray, y_m: np.ndarray) -> np.ndarray:
    """True where the point is inside any of ``zones``."""
    out = np.zeros(np.shape(lat), dtype=bool)
    for z in zones:
        out |= zone_mask(z, lat, lon, x_m, y_m)
    return out

"""Geohash, grid snapping and privacy zones: known answers, a reference bisection, borders, NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.privacy import geo

# Known answers: Wikipedia's "Geohash" article and geohash.org.
VECTORS = [
    (57.64911, 10.40744, 11, "u4pruydqqvj"),
    (42.6, -5.6, 5, "ezs42"),
    (0.0, 0.0, 1, "s"),          # both borders: the upper cells
    (-90.0, -180.0, 4, "0000"),
    (90.0, 180.0, 4, "zzzz"),    # the top border belongs to the last cell
]


def reference_geohash(lat: float, lon: float, precision: int) -> str:
    """The textbook definition: alternate bisections, longitude first, ``>=`` mid goes up."""
    lat_r, lon_r = [-90.0, 90.0], [-180.0, 180.0]
    bits, even, out = 0, True, []
    for i in range(5 * precision):
        r, v = (lon_r, lon) if even else (lat_r, lat)
        mid = (r[0] + r[1]) / 2
        bit = v >= mid
        r[0 if bit else 1] = mid
        bits = bits * 2 + bit
        even = not even
        if i % 5 == 4:
            out.append(geo.BASE32[bits])
            bits = 0
    return "".join(out)


@pytest.mark.parametrize("lat,lon,p,code", VECTORS)
def test_known_answers(lat, lon, p, code):
    assert geo.geohash_encode(np.array([lat]), np.array([lon]), p)[0] == code
    assert reference_geohash(lat, lon, p) == code


def _dyadic(n: int, lo: float, span: float):
    """A coordinate exactly on a cell border at some precision."""
    return st.integers(1, 30).flatmap(lambda bits: st.integers(0, 2 ** bits).map(
        lambda k: lo + k * span / 2 ** bits))


lats = st.one_of(st.floats(-90, 90), _dyadic(30, -90.0, 180.0))
lons = st.one_of(st.floats(-180, 180), _dyadic(30, -180.0, 360.0))


@settings(max_examples=300)
@given(st.lists(st.tuples(lats, lons), min_size=1, max_size=20), st.integers(1, 12))
def test_vectorised_encoding_matches_the_reference_bisection_even_on_borders(points, p):
    lat = np.array([a for a, _ in points])
    lon = np.array([b for _, b in points])
    got = geo.geohash_encode(lat, lon, p)
    assert list(got) == [reference_geohash(a, b, p) for a, b in points]


@settings(max_examples=300)
@given(lats, lons, st.integers(1, 12))
def test_the_centre_is_the_middle_of_the_point_s_cell(lat, lon, p):
    code = geo.geohash_encode(np.array([lat]), np.array([lon]), p)[0]
    la0, la1, lo0, lo1 = geo.geohash_bounds(code)
    assert la0 <= lat <= la1 and lo0 <= lon <= lo1
    c_lat, c_lon = geo.geohash_centre(np.array([lat]), np.array([lon]), p)
    assert c_lat[0] == (la0 + la1) / 2 and c_lon[0] == (lo0 + lo1) / 2
    h, w = geo.geohash_cell_size_m(p, lat)
    # Generalization error is at most half a cell each way (metres on the sphere).
    assert abs(c_lat[0] - lat) * geo._M_PER_DEG <= h / 2 + 1e-6


def test_nan_stays_unknown():
    lat = np.array([np.nan, 1.0, 2.0])
    lon = np.array([1.0, np.nan, 3.0])
    assert list(geo.geohash_encode(lat, lon, 5))[:2] == ["", ""]
    c_lat, c_lon = geo.geohash_centre(lat, lon, 5)
    assert np.isnan(c_lat[:2]).all() and np.isnan(c_lon[:2]).all() and np.isfinite(c_lat[2])


@pytest.mark.parametrize("p,h_m,w_m", [(1, 5003e3, 5003e3), (5, 4.89e3, 4.89e3), (7, 152.9, 152.9),
                                       (8, 19.1, 38.2), (9, 4.78, 4.78), (12, 0.0186, 0.0373)])
def test_cell_sizes_in_metres_at_the_equator(p, h_m, w_m):
    h, w = geo.geohash_cell_size_m(p)
    assert h == pytest.approx(h_m, rel=0.01) and w == pytest.approx(w_m, rel=0.01)


@pytest.mark.parametrize("p", [0, 13, 7.0, True])
def test_bad_precision(p):
    with pytest.raises(ValueError, match="precision"):
        geo.geohash_centre(np.zeros(1), np.zeros(1), p)


@given(st.lists(st.floats(-1e5, 1e5), min_size=1, max_size=50), st.sampled_from([0.1, 0.5, 1.0, 2.5, 10.0]))
def test_grid_snaps_to_cell_centres(xs, cell):
    x = np.array(xs)
    out = geo.snap_grid(x, cell)
    k = np.floor(x / cell)
    assert np.array_equal(out, (k + 0.5) * cell)
    assert np.all(np.abs(out - x) <= cell / 2 * (1 + 1e-9) + 1e-9)
    # Same cell, same output: nothing finer than the cell is released.
    assert np.array_equal(geo.snap_grid(k * cell + cell * 0.25, cell), out)


def test_grid_and_step_keep_nan_and_refuse_bad_cells():
    assert np.isnan(geo.snap_grid(np.array([np.nan]), 1.0)).all()
    assert geo.snap_step(np.array([12.34, np.nan]), 0.1)[0] == pytest.approx(12.3)
    with pytest.raises(ValueError):
        geo.snap_grid(np.zeros(1), 0.0)
    with pytest.raises(ValueError):
        geo.snap_step(np.zeros(1), -1.0)


# -- zones -------------------------------------------------------------------------------------------

def destination(lat: float, lon: float, bearing_deg: float, d_m: float) -> tuple[float, float]:
    """The point ``d_m`` from (lat, lon) along ``bearing_deg`` on the sphere (independent of haversine)."""
    delta = d_m / geo.EARTH_RADIUS_M
    th, p1, l1 = math.radians(bearing_deg), math.radians(lat), math.radians(lon)
    p2 = math.asin(math.sin(p1) * math.cos(delta) + math.cos(p1) * math.sin(delta) * math.cos(th))
    l2 = l1 + math.atan2(math.sin(th) * math.sin(delta) * math.cos(p1), math.cos(delta) - math.sin(p1) * math.sin(p2))
    return math.degrees(p2), (math.degrees(l2) + 540) % 360 - 180


HOME = geo.Circle("home", 47.37726, 8.54200, 15.0)
NAN1 = np.array([np.nan])


def _in(zone, lat, lon, x=np.nan, y=np.nan) -> bool:
    return bool(geo.zone_mask(zone, np.array([lat]), np.array([lon]), np.array([x]), np.array([y]))[0])


@settings(max_examples=200)
@given(st.floats(0, 360), st.floats(-89, 89), st.floats(-179, 179), st.floats(1, 5000))
def test_a_point_exactly_on_a_circle_s_border_is_inside_and_one_metre_out_is_not(bearing, lat, lon, r):
    zone = geo.Circle("z", lat, lon, r)
    assert _in(zone, *destination(lat, lon, bearing, r))
    assert _in(zone, *destination(lat, lon, bearing, r * 0.999))
    assert not _in(zone, *destination(lat, lon, bearing, r + 1.0))


def test_circle_across_the_antimeridian():
    zone = geo.Circle("z", 10.0, 179.99995, 20.0)
    assert _in(zone, *destination(10.0, 179.99995, 90, 15.0))  # lon wrapped to -179.99...
    assert not _in(zone, *destination(10.0, 179.99995, 90, 25.0))


def test_haversine_against_a_known_distance():
    # Zurich HB to Bern (about 95.4 km on the mean sphere).
    assert geo.haversine_m(np.array([46.94883]), np.array([7.43913]), 47.37817, 8.54019)[0] == pytest.approx(
        95_400, rel=0.01)


SQUARE = geo.Polygon("sq", ((47.0, 8.0), (47.001, 8.0), (47.001, 8.001), (47.0, 8.001)))
# An L: the square minus its upper-right quarter.
ELL = geo.Polygon("ell", ((0.0, 0.0), (0.002, 0.0), (0.002, 0.001), (0.001, 0.001), (0.001, 0.002), (0.0, 0.002)))


@pytest.mark.parametrize("lat,lon,inside", [
    (47.0005, 8.0005, True), (47.0, 8.0, True), (47.001, 8.001, True), (47.0, 8.0005, True),   # vertices, edges
    (47.0005, 8.001, True), (47.0005, 7.99999, False), (47.00101, 8.0005, False), (46.9, 8.0, False),
])
def test_polygon_square(lat, lon, inside):
    assert _in(SQUARE, lat, lon) is inside


@pytest.mark.parametrize("lat,lon,inside", [
    (0.0005, 0.0005, True), (0.0015, 0.0005, True), (0.0005, 0.0015, True),
    (0.0015, 0.0015, False),                       # the notch
    (0.001, 0.0015, True), (0.0015, 0.001, True),  # on the notch's edges
])
def test_polygon_concave(lat, lon, inside):
    assert _in(ELL, lat, lon) is inside


def reference_in_polygon(lat: float, lon: float, pts) -> bool:
    """Winding number (a different algorithm from the module's ray casting)."""
    wn = 0
    for (ya, xa), (yb, xb) in zip(pts, pts[1:] + pts[:1]):
        cross = (xb - xa) * (lat - ya) - (lon - xa) * (yb - ya)
        if ya <= lat < yb and cross > 0:
            wn += 1
        elif yb <= lat < ya and cross < 0:
            wn -= 1
    return wn != 0


@settings(max_examples=200)
@given(st.lists(st.tuples(st.floats(-0.0005, 0.0025), st.floats(-0.0005, 0.0025)), min_size=1, max_size=30))
def test_polygon_agrees_with_a_winding_number_away_from_edges(points):
    lat = np.array([p[0] for p in points])
    lon = np.array([p[1] for p in points])
    got = geo.zone_mask(ELL, lat, lon, lat * np.nan, lat * np.nan)
    for i, (a, b) in enumerate(points):
        ref = reference_in_polygon(a, b, ELL.points)
        if got[i] != ref:  # only allowed within the border tolerance of an edge (counted as inside)
            assert got[i] and min(abs(a - v) for v in (0, 0.001, 0.002)) * geo._M_PER_DEG < 0.02 \
                or min(abs(b - v) for v in (0, 0.001, 0.002)) * geo._M_PER_DEG < 0.02


def test_polygon_validation():
    with pytest.raises(ValueError, match="at least 3"):
        geo.Polygon("p", ((0.0, 0.0), (1.0, 1.0)))
    with pytest.raises(ValueError, match="antimeridian"):
        geo.Polygon("p", ((0.0, -179.0), (1.0, 179.0), (1.0, 0.0)))


def test_site_zones_include_their_border():
    c = geo.SiteCircle("charger", 1.0, 2.0, 3.0)
    assert _in(c, np.nan, np.nan, 4.0, 2.0) and _in(c, np.nan, np.nan, 1.0, -1.0)
    assert not _in(c, np.nan, np.nan, 4.1, 2.0)
    r = geo.SiteRect("office", -10.0, 5.0, 0.0, 12.0)
    assert _in(r, np.nan, np.nan, -10.0, 12.0) and _in(r, np.nan, np.nan, -5.0, 8.0)
    assert not _in(r, np.nan, np.nan, 0.1, 8.0) and not _in(r, np.nan, np.nan, -5.0, 4.9)


def test_unknown_coordinates_are_in_no_zone_and_in_zones_is_any():
    zones = [HOME, SQUARE, geo.SiteRect("r", 0, 0, 1, 1)]
    lat = np.array([np.nan, 47.37726, 47.0005, 0.0])
    lon = np.array([np.nan, 8.54200, 8.0005, 0.0])
    x = np.array([np.nan, np.nan, np.nan, 0.5])
    y = np.array([np.nan, np.nan, np.nan, 0.5])
    assert list(geo.in_zones(zones, lat, lon, x, y)) == [False, True, True, True]
    assert list(geo.in_zones([], lat, lon, x, y)) == [False] * 4

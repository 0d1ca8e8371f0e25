"""Geography on arrays: great-circle distances and geohash cells, vectorised in numpy.

- ``haversine_km(lat1, lon1, lat2, lon2)``: great-circle distance in km on a sphere of radius
  ``EARTH_RADIUS_KM`` (the mean Earth radius); arguments are degrees and broadcast like numpy
  operands, so (U, 1) user locations against (U, K) item locations give (U, K) distances.
- ``pairwise_km(lat1, lon1, lat2, lon2)``: the (n, m) matrix of the same distances between two sets
  of points, through unit vectors and one matrix product (fast for the generator's n x m scoring).
- ``geohash(lat, lon, precision)``: the standard geohash (G. Niemeyer, 2008) of each point, as
  strings of ``precision`` base-32 characters. Each character adds 5 bits, alternately halving the
  longitude and the latitude range (longitude first); a cell of precision 4 is about 39 x 20 km,
  5 about 4.9 x 4.9 km, 6 about 1.2 x 0.6 km. Points share a prefix when they share the cell.
- ``offset_km(lat, lon, east_km, north_km)``: the point ``east_km`` east and ``north_km`` north
  of (lat, lon) on the local flat approximation, good to a fraction of a percent within a city.
"""

from __future__ import annotations

import numpy as np

from recfunnel.utils.errors import RecfunnelError

__all__ = ["EARTH_RADIUS_KM", "GEOHASH_ALPHABET", "geohash", "haversine_km", "offset_km", "pairwise_km", "unit_vectors"]

EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG)
GEOHASH_ALPHABET = "0123456789bcdefghjkmnpqrstuvwxyz"
MAX_GEOHASH_PRECISION = 12  # 60 bits: fits an int64
KM_PER_DEGREE_LAT = np.pi * EARTH_RADIUS_KM / 180.0


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance (km, float64) between points given in degrees; arguments broadcast.

    NaN in any coordinate gives NaN for that pair.
    """
    p1, p2 = np.radians(np.asarray(lat1, np.float64)), np.radians(np.asarray(lat2, np.float64))
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2, np.float64) - np.asarray(lon1, np.float64))
    a = np.sin(dp / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def unit_vectors(lat, lon) -> np.ndarray:
    """(n, 3) float64 points on the unit sphere for (n,) latitudes and longitudes in degrees."""
    p, l = np.radians(np.asarray(lat, np.float64)), np.radians(np.asarray(lon, np.float64))
    return np.stack([np.cos(p) * np.cos(l), np.cos(p) * np.sin(l), np.sin(p)], axis=-1)


def pairwise_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """(n, m) great-circle distances (km) between points (n,) and points (m,), in degrees.

    The chord between unit vectors gives the same angle as the haversine formula
    (2 asin(|p - q| / 2)); float64 keeps it to about a metre at any range.
    """
    p, q = unit_vectors(lat1, lon1), unit_vectors(lat2, lon2)
    x = p @ q.T  # cosines; then, in place (this runs on millions of pairs): half the chord |p - q| / 2
    np.subtract(1.0, x, out=x)
    np.maximum(x, 0.0, out=x)
    np.sqrt(np.multiply(x, 0.5, out=x), out=x)
    np.arcsin(np.minimum(x, 1.0, out=x), out=x)
    return np.multiply(x, 2.0 * EARTH_RADIUS_KM, out=x)


def geohash(lat, lon, precision: int) -> np.ndarray:
    """(n,) geohash strings (numpy unicode, ``precision`` characters) of points (n,) in degrees.

    lat must be in [-90, 90] and lon in [-180, 180] (a point on the upper edge falls in the last
    cell, as in the reference implementation); anything else, NaN included, raises ``RecfunnelError``.
    """
    if isinstance(precision, bool) or not isinstance(precision, (int, np.integer)) or not (
            1 <= precision <= MAX_GEOHASH_PRECISION):
        raise RecfunnelError(f"geohash: precision must be an integer in [1, {MAX_GEOHASH_PRECISION}], got {precision!r}")
    lat = np.atleast_1d(np.asarray(lat, np.float64))
    lon = np.atleast_1d(np.asarray(lon, np.float64))
    if lat.shape != lon.shape or lat.ndim != 1:
        raise RecfunnelError(f"geohash: lat and lon must be (n,) arrays of one shape, got {lat.shape} and {lon.shape}")
    bad = ~((np.abs(lat) <= 90.0) & (np.abs(lon) <= 180.0))  # NaN fails both
    if bad.any():
        i = int(np.argmax(bad))
        raise RecfunnelError(f"geohash: point {i} (lat {lat[i]}, lon {lon[i]}) is not a valid location; "
                             "lat must be in [-90, 90] and lon in [-180, 180] degrees")
    bits = 5 * precision
    lon_bits, lat_bits = (bits + 1) // 2, bits // 2  # longitude takes the first, odd-numbered bit
    x = _quantise(lon, -180.0, 180.0, lon_bits)
    y = _quantise(lat, -90.0, 90.0, lat_bits)
    code = np.zeros(len(lat), np.int64)
    for b in range(bits):  # interleave: bit b of the code is lon's (b even) or lat's (b odd) next bit
        source, nbits, k = (x, lon_bits, b // 2) if b % 2 == 0 else (y, lat_bits, b // 2)
        code = (code << 1) | ((source >> (nbits - 1 - k)) & 1)
    shifts = 5 * np.arange(precision - 1, -1, -1)
    digits = (code[:, None] >> shifts) & 31  # (n, precision)
    chars = np.frombuffer(GEOHASH_ALPHABET.encode(), np.uint8)[digits]
    return np.ascontiguousarray(chars).view(f"S{precision}").ravel().astype(f"U{precision}")


def _quantise(x: np.ndarray, lo: float, hi: float, nbits: int) -> np.ndarray:
    """(n,) int64 index of the 2**nbits equal intervals of [lo, hi] holding each x (hi in the last).

    The same as bisecting nbits times with "x >= mid goes up": the midpoints are dyadic fractions.
    """
    return np.minimum(np.floor((x - lo) / (hi - lo) * 2.0 ** nbits), 2 ** nbits - 1).astype(np.int64)


def offset_km(lat, lon, east_km, north_km) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) in degrees of the points ``east_km`` / ``north_km`` from (lat, lon); arguments broadcast.

    Local equirectangular approximation (the longitude scale is cos(lat) at the starting point);
    longitudes wrap into [-180, 180), latitudes are clipped to the poles.
    """
    lat = np.asarray(lat, np.float64)
    new_lat = np.clip(lat + np.asarray(north_km, np.float64) / KM_PER_DEGREE_LAT, -90.0, 90.0)
    scale = KM_PER_DEGREE_LAT * np.maximum(np.cos(np.radians(lat)), 1e-9)
    new_lon = (np.asarray(lon, np.float64) + np.asarray(east_km, np.float64) / scale + 180.0) % 360.0 - 180.0
    return new_lat, new_lon

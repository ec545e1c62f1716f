//! Positions on the ground, in degrees, moved in metres: enough geometry for
//! routes of a few tens of kilometres.

/// Metres per degree of latitude (and of longitude at the equator).
const M_PER_DEGREE: f64 = 111_320.0;

/// A position, (latitude, longitude) in degrees.
pub(crate) type Position = (f64, f64);

/// `from` moved `north_m` metres north and `east_m` metres east.
pub(crate) fn offset(from: Position, north_m: f64, east_m: f64) -> Position {
    let lat = from.0 + north_m / M_PER_DEGREE;
    let lon = from.1 + east_m / (M_PER_DEGREE * from.0.to_radians().cos());
    (lat.clamp(-89.9, 89.9), wrap_lon(lon))
}

fn wrap_lon(lon: f64) -> f64 {
    if lon > 180.0 {
        lon - 360.0
    } else if lon < -180.0 {
        lon + 360.0
    } else {
        lon
    }
}

/// Great-circle distance in metres, as the processor computes it.
pub fn distance_m(a: Position, b: Position) -> f64 {
    candor_schemas::batch::haversine_m(a, b)
}

/// The point a fraction `f` (0 to 1) of the way from `a` to `b`.
pub(crate) fn between(a: Position, b: Position, f: f64) -> Position {
    (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_as_long_as_asked() {
        let munich = (48.137, 11.575);
        for (n, e) in [(1000.0, 0.0), (0.0, 1000.0), (-600.0, 800.0)] {
            let d = distance_m(munich, offset(munich, n, e));
            assert!((d - 1000.0).abs() < 5.0, "{n} {e}: {d}");
        }
    }
}

//! Parsing of configuration values shared by every crate's settings.

use std::time::Duration;

/// Longest duration a setting may ask for (about 11.5 days).
pub const MAX_SECONDS: f64 = 1_000_000.0;

/// Parses seconds (`0.5`, `150`) into a duration; refuses negative, NaN, infinite and absurdly
/// large values with a message naming the value.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!(
            "`{s}` must be a finite, non-negative number of seconds"
        ));
    }
    if v > MAX_SECONDS {
        return Err(format!(
            "`{s}` seconds is more than the maximum {MAX_SECONDS}"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Parses a fraction or probability in [0, 1].
pub fn parse_unit(s: &str) -> Result<f32, String> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("`{s}` must be within [0, 1]"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_validated() {
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_seconds(" 150 "), Ok(Duration::from_secs(150)));
        for bad in ["-1", "NaN", "inf", "-inf", "1e300", "abc", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
        assert!(parse_unit("0.66").is_ok());
        assert!(parse_unit("1.5").is_err());
        assert!(parse_unit("nan").is_err());
    }
}

//! Durations as the config writes them (`500ms`, `30s`, `15m`, `4h`, `1d`).
//!
//! A hand-written parser rather than a general one: the schema accepts exactly
//! one number and one unit, so `1h30m` or `2 hours` are refused with a message
//! instead of being read in a way the author did not mean.

use std::time::Duration;

/// Parses `<integer><unit>` with unit one of `ms`, `s`, `m`, `h`, `d`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("\"{text}\" has no unit (use ms, s, m, h or d, as in 30s)"))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "\"{text}\" does not start with a number (as in 30s)"
        ));
    }
    let n: u64 = number
        .parse()
        .map_err(|_| format!("\"{text}\": {number} is too large"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "\"{text}\": unknown unit \"{other}\" (use ms, s, m, h or d)"
            ))
        }
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("\"{text}\" is too long"))
}

/// Formats a duration back into the largest unit that represents it exactly,
/// so a config read and written again keeps its spelling.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms != 0 && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse("4h").unwrap(), Duration::from_secs(14_400));
        assert_eq!(parse("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse(" 0s ").unwrap(), Duration::ZERO);
    }

    #[test]
    fn refuses_what_it_cannot_read_exactly() {
        for bad in [
            "",
            "30",
            "s",
            "1h30m",
            "2 hours",
            "-1s",
            "1.5s",
            "99999999999999999999s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in ["500ms", "30s", "15m", "4h", "1d", "0ms", "1500ms"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}

//! Human sizes: `512`, `4K`, `1.5G`, `1T` (binary multiples, as `ublk` and `rublk` take them).

/// Parse a size with an optional K/M/G/T/P suffix (case-insensitive, optional trailing `B` or
/// `iB`). Errors say what was wrong in one line.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, mult) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 1u64 << 10),
        Some('m') => (&body[..body.len() - 1], 1 << 20),
        Some('g') => (&body[..body.len() - 1], 1 << 30),
        Some('t') => (&body[..body.len() - 1], 1 << 40),
        Some('p') => (&body[..body.len() - 1], 1 << 50),
        _ => (body, 1),
    };
    let bad = || format!("invalid size '{s}' (expected a number with an optional K/M/G/T suffix)");
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| format!("size '{s}' is too large"));
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    if !f.is_finite() || f < 0.0 {
        return Err(bad());
    }
    let v = f * mult as f64;
    if v > u64::MAX as f64 {
        return Err(format!("size '{s}' is too large"));
    }
    Ok(v as u64)
}

/// Print bytes compactly: `1G`, `512M`, `1536K`, `1000` (the largest exact unit).
pub fn format_size(n: u64) -> String {
    for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if n != 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{}", n >> shift, suffix);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_binary() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size(" 8GB ").unwrap(), 8 << 30);
    }

    #[test]
    fn garbage_is_rejected_with_the_input_in_the_message() {
        for bad in ["", "x", "12Q", "-1", "1..2G", "G"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("size"), "{bad}: {e}");
        }
        assert!(
            parse_size("99999999999P")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn format_picks_largest_exact_unit() {
        assert_eq!(format_size(1 << 30), "1G");
        assert_eq!(format_size(1536 << 10), "1536K");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
    }
}

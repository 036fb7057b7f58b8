//! Kubernetes memory quantities, as Spark needs them.

/// Parses a Kubernetes quantity (e.g. `2Gi`, `1500M`, `512Mi`) into bytes.
pub fn parse_bytes(quantity: &str) -> Option<u64> {
    let quantity = quantity.trim();
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * factor;
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
}

/// Mebibytes (rounded up) of a quantity.
pub fn mebibytes(quantity: &str) -> Option<u64> {
    parse_bytes(quantity).map(|b| b.div_ceil(1024 * 1024))
}

/// Spark's memory overhead for a JVM of `heap_mib`: 10 %, at least 384 MiB.
pub fn overhead_mib(heap_mib: u64) -> u64 {
    (heap_mib / 10).max(384)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_suffixes() {
        assert_eq!(mebibytes("2Gi"), Some(2048));
        assert_eq!(mebibytes("512Mi"), Some(512));
        assert_eq!(parse_bytes("1k"), Some(1000));
        assert_eq!(mebibytes("1.5Gi"), Some(1536));
        assert_eq!(parse_bytes("2X"), None);
        assert_eq!(parse_bytes("Gi"), None);
    }

    #[test]
    fn overhead_has_a_floor() {
        assert_eq!(overhead_mib(1024), 384);
        assert_eq!(overhead_mib(8192), 819);
    }
}

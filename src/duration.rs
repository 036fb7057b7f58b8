//! Go-style durations (`90s`, `5m`, `1h30m`) in user specs: one parser that never panics, and
//! the bounds of every duration field, shared by the CRD's CEL rules (admission) and the
//! operator (which parses each value once into a [`Duration`]).

use std::time::Duration;

/// A duration field and the range it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Path of the field as a user writes it, e.g. `probe.period`.
    pub field: &'static str,
    /// Smallest value, as written in a spec.
    pub min: &'static str,
    /// Largest value, as written in a spec.
    pub max: &'static str,
}

/// How often the operator probes each server.
pub const PROBE_PERIOD: Bounds = Bounds {
    field: "probe.period",
    min: "1s",
    max: "10m",
};
/// Deadline of one probe call.
pub const PROBE_TIMEOUT: Bounds = Bounds {
    field: "probe.timeout",
    min: "100ms",
    max: "5m",
};
/// Time a new server may take to become healthy.
pub const STARTUP_DEADLINE: Bounds = Bounds {
    field: "probe.startupDeadline",
    min: "10s",
    max: "24h",
};
/// Age after which an idle server is recycled.
pub const MAX_IDLE_AGE: Bounds = Bounds {
    field: "hotPool.maxIdleAge",
    min: "1m",
    max: "8760h",
};
/// How long a claim may wait for a server.
pub const CLAIM_TIMEOUT: Bounds = Bounds {
    field: "hotPool.claimTimeout",
    min: "1s",
    max: "24h",
};
/// How long demand must stay low before the autoscaler lowers its target.
pub const SCALE_DOWN_DELAY: Bounds = Bounds {
    field: "hotPool.autoscale.scaleDownDelay",
    min: "0s",
    max: "24h",
};
/// How long the replacement of a handed-out server waits while the pool still has an idle one.
pub const REFILL_DELAY: Bounds = Bounds {
    field: "hotPool.refillDelay",
    min: "0s",
    max: "10m",
};
/// How long a window of scheduled pool capacity stays open.
pub const SCHEDULE_DURATION: Bounds = Bounds {
    field: "hotPool.schedule[].duration",
    min: "1s",
    max: "8760h",
};
/// Deadline of a new server's whole warm-up.
pub const WARMUP_TIMEOUT: Bounds = Bounds {
    field: "warmup.timeout",
    min: "1s",
    max: "1h",
};
/// How long a gateway user's dedicated server stays claimed with no call.
pub const GATEWAY_IDLE_TIMEOUT: Bounds = Bounds {
    field: "gateway.idleTimeout",
    min: "10s",
    max: "168h",
};
/// Lifetime of a bound claim.
pub const CLAIM_TTL: Bounds = Bounds {
    field: "ttl",
    min: "1s",
    max: "8760h",
};

/// The syntax the CRD admits: at most four parts of at most five digits each, so that no
/// admitted value can overflow (4 × 99999h is about 45 years).
pub const SYNTAX: &str = "^([0-9]{1,5}(ms|s|m|h)){1,4}$";
/// Longest admitted duration string (four parts of five digits and a two-letter unit).
pub const MAX_LENGTH: usize = 28;

/// Why a duration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not of the form `1h30m`.
    #[error("{field} {value:?} is not a duration such as 30s, 5m or 1h30m")]
    Syntax {
        /// The field.
        field: &'static str,
        /// What the user wrote (cut to 40 characters).
        value: String,
    },
    /// Outside the field's range.
    #[error("{field} {value} is outside the allowed range {min} to {max}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// What the user wrote.
        value: String,
        /// Smallest allowed.
        min: &'static str,
        /// Largest allowed.
        max: &'static str,
    },
}

/// Parses `1h30m`-style text (exactly what [`SYNTAX`] admits) with checked arithmetic: any
/// input yields a value or `None`.
pub fn parse(text: &str) -> Option<Duration> {
    if text.is_empty() || text.len() > MAX_LENGTH {
        return None;
    }
    let mut total_millis: u64 = 0;
    let mut rest = text;
    let mut parts = 0;
    while !rest.is_empty() {
        parts += 1;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 || parts > 4 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_millis, unit_len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return None;
        };
        rest = &rest[unit_len..];
        total_millis = total_millis.checked_add(number.checked_mul(unit_millis)?)?;
    }
    Some(Duration::from_millis(total_millis))
}

impl Bounds {
    /// Parses `value` and checks it against the field's range.
    pub fn parse(&self, value: &str) -> Result<Duration, DurationError> {
        let parsed = parse(value).ok_or_else(|| DurationError::Syntax {
            field: self.field,
            value: value.chars().take(40).collect(),
        })?;
        let (min, max) = (self.min_duration(), self.max_duration());
        if parsed < min || parsed > max {
            return Err(DurationError::OutOfRange {
                field: self.field,
                value: value.into(),
                min: self.min,
                max: self.max,
            });
        }
        Ok(parsed)
    }

    fn min_duration(&self) -> Duration {
        parse(self.min).unwrap_or_default()
    }

    fn max_duration(&self) -> Duration {
        parse(self.max).unwrap_or(Duration::MAX)
    }

    /// The CEL rule that admits exactly the values [`Bounds::parse`] accepts.
    pub fn cel_rule(&self) -> String {
        format!(
            "self.matches('{SYNTAX}') && duration(self) >= duration('{}') && duration(self) <= duration('{}')",
            self.min, self.max
        )
    }

    /// The message a user sees when the rule refuses a value.
    pub fn cel_message(&self) -> String {
        format!(
            "{} must be a duration such as 30s, 5m or 1h30m, from {} to {}",
            self.field, self.min, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("0s"), Some(Duration::ZERO));
    }

    #[test]
    fn hostile_text_is_refused_without_panicking() {
        for text in [
            "",
            "99999999999999999999h",
            "18446744073709551615h",
            "1h1h1h1h1h1h1h1h1h1h",
            "5",
            "h",
            "1d",
            "-1s",
            "1.5h",
            "1 h",
            "ⅷs",
            "１s",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
        assert_eq!(parse(&"9".repeat(10_000)), None);
    }

    #[test]
    fn bounds_refuse_values_outside_the_range_with_a_readable_message() {
        let err = PROBE_PERIOD.parse("1ms").unwrap_err().to_string();
        assert_eq!(
            err,
            "probe.period 1ms is outside the allowed range 1s to 10m"
        );
        assert!(PROBE_TIMEOUT.parse("0s").is_err());
        assert!(CLAIM_TTL.parse("99999h").is_err());
        assert_eq!(CLAIM_TTL.parse("8h"), Ok(Duration::from_secs(8 * 3600)));
        let err = CLAIM_TTL
            .parse("99999999999999999999h")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a duration"), "{err}");
    }

    #[test]
    fn every_bound_is_itself_a_valid_duration() {
        for b in [
            PROBE_PERIOD,
            PROBE_TIMEOUT,
            STARTUP_DEADLINE,
            MAX_IDLE_AGE,
            CLAIM_TIMEOUT,
            SCALE_DOWN_DELAY,
            CLAIM_TTL,
        ] {
            assert!(parse(b.min).is_some() && parse(b.max).is_some(), "{b:?}");
            assert!(b.min_duration() <= b.max_duration());
        }
    }
}

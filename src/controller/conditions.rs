//! Status conditions: a list keyed by `type` whose transition times survive unchanged updates.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Sets condition `type_` in `conditions`, keeping its transition time when the status holds.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let transition = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    let condition = Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: transition,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Whether condition `type_` is True.
#[cfg(test)]
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_changes_only_with_the_status() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            "Ready",
            false,
            "Starting",
            "m".into(),
            Some(1),
            t0,
        );
        set_condition(
            &mut conditions,
            "Ready",
            false,
            "Starting",
            "m2".into(),
            Some(1),
            t1,
        );
        assert_eq!(conditions[0].last_transition_time.0, t0);
        assert_eq!(conditions[0].message, "m2");
        set_condition(
            &mut conditions,
            "Ready",
            true,
            "Up",
            "m".into(),
            Some(1),
            t1,
        );
        assert_eq!(conditions[0].last_transition_time.0, t1);
        assert_eq!(conditions.len(), 1);
        assert!(is_true(&conditions, "Ready"));
    }
}

//! Admission rules of both CRDs, checked with kube's CEL evaluator (the same rules run in the
//! apiserver; the e2e bad-input suite checks them there).

use super::*;
use crate::test_support::cluster;
use serde_json::json;

fn with(patch: serde_json::Value) -> SparkConnectCluster {
    let mut value = serde_json::to_value(cluster()).unwrap();
    crate::builders::merge::merge(&mut value, &patch);
    serde_json::from_value(value).unwrap()
}

fn refused(c: &SparkConnectCluster) -> String {
    c.validate_cel()
        .expect_err("the rules must refuse this")
        .to_string()
}

#[test]
fn the_example_passes_every_rule() {
    cluster().validate_cel().unwrap();
}

#[test]
fn pool_bounds_are_ordered() {
    let message = refused(&with(
        serde_json::json!({"spec": {"hotPool": {"idle": 5, "max": 2}}}),
    ));
    assert!(
        message.contains("hotPool must satisfy min <= idle <= max"),
        "{message}"
    );
    assert!(
        refused(&with(
            serde_json::json!({"spec": {"hotPool": {"min": 3, "idle": 1}}})
        ))
        .contains("min <= idle")
    );
}

#[test]
fn memory_must_be_a_sane_quantity() {
    let bad = with(serde_json::json!({"spec": {"executors": {"resources": {"memory": "lots"}}}}));
    assert!(refused(&bad).contains("memory must be a quantity"));
    let small = with(serde_json::json!({"spec": {"server": {"resources": {"memory": "100Mi"}}}}));
    assert!(refused(&small).contains("at least 512Mi"));
}

#[test]
fn durations_ports_names_and_dynamic_allocation() {
    assert!(
        refused(&with(
            serde_json::json!({"spec": {"probe": {"timeout": "3 seconds"}}})
        ))
        .contains("duration")
    );
    assert!(
        refused(&with(
            serde_json::json!({"spec": {"server": {"port": 4040}}})
        ))
        .contains("port must differ")
    );
    let dynamic = serde_json::json!({"spec": {"executors": {"dynamicAllocation": {"minExecutors": 5, "maxExecutors": 1}}}});
    assert!(refused(&with(dynamic)).contains("minExecutors must not exceed"));
    let mut long = cluster();
    long.metadata.name = Some("x".repeat(41));
    assert!(refused(&long).contains("at most 40 characters"));
}

#[test]
fn auth_mode_is_immutable() {
    let old = cluster();
    let new = with(serde_json::json!({"spec": {"auth": {"mode": "Token"}}}));
    let message = new.validate_cel_update(&old).unwrap_err().to_string();
    assert!(message.contains("auth.mode cannot be changed"), "{message}");
    old.validate_cel_update(&old).unwrap();
}

#[test]
fn claim_cluster_is_required_and_immutable() {
    let claim = |cluster: &str| {
        SparkConnectClaim::new(
            "c",
            SparkConnectClaimSpec {
                cluster: cluster.into(),
                user: None,
                ttl: None,
            },
        )
    };
    assert!(
        claim("")
            .validate_cel()
            .unwrap_err()
            .to_string()
            .contains("cluster must name")
    );
    assert!(
        claim("b")
            .validate_cel_update(&claim("a"))
            .unwrap_err()
            .to_string()
            .contains("cannot be changed")
    );
    let mut ttl = claim("a");
    ttl.spec.ttl = Some("forever".into());
    assert!(
        ttl.validate_cel()
            .unwrap_err()
            .to_string()
            .contains("ttl must be a duration")
    );
}

#[test]
fn every_duration_is_bounded_at_admission() {
    for (patch, field) in [
        (
            json!({"spec": {"probe": {"period": "1ms"}}}),
            "probe.period",
        ),
        (
            json!({"spec": {"probe": {"timeout": "0s"}}}),
            "probe.timeout",
        ),
        (
            json!({"spec": {"probe": {"startupDeadline": "99999h"}}}),
            "probe.startupDeadline",
        ),
        (
            json!({"spec": {"hotPool": {"maxIdleAge": "1s"}}}),
            "hotPool.maxIdleAge",
        ),
        (
            json!({"spec": {"hotPool": {"claimTimeout": "999999999999999999h"}}}),
            "hotPool.claimTimeout",
        ),
        (
            json!({"spec": {"hotPool": {"autoscale": {"scaleDownDelay": "25h"}}}}),
            "scaleDownDelay",
        ),
        (
            json!({"spec": {"hotPool": {"refillDelay": "11m"}}}),
            "hotPool.refillDelay",
        ),
        (
            json!({"spec": {"warmup": {"timeout": "2h"}}}),
            "warmup.timeout",
        ),
    ] {
        let message = refused(&with(patch.clone()));
        assert!(message.contains(field), "{patch}: {message}");
    }
    with(json!({"spec": {"probe": {"period": "5m30s", "timeout": "100ms"}}}))
        .validate_cel()
        .unwrap();
}

#[test]
fn names_must_be_dns_labels_because_they_name_services() {
    for bad in ["Analytics", "1team", "team_a", "team.a", "-a"] {
        let mut c = cluster();
        c.metadata.name = Some(bad.into());
        assert!(refused(&c).contains("DNS-1035"), "{bad}");
    }
}

#[test]
fn the_pod_template_cannot_set_labels_or_names_the_operator_owns() {
    for labels in [
        json!({"sparkconnect.dev/state": "idle"}),
        json!({"sparkconnect.dev/anything": "x"}),
        json!({"app.kubernetes.io/component": "server"}),
        json!({"app.kubernetes.io/managed-by": "me"}),
    ] {
        let bad =
            with(json!({"spec": {"server": {"podTemplate": {"metadata": {"labels": labels}}}}}));
        assert!(
            refused(&bad).contains("labels the operator owns"),
            "{labels}"
        );
    }
    // The name/namespace rule is checked against the real apiserver by the e2e bad-input
    // suite (kube's evaluator treats nested `metadata` like the root's), and by `validate`.
    with(json!({"spec": {"server": {"podTemplate": {"metadata": {"labels": {"team": "data"}}}}}}))
        .validate_cel()
        .unwrap();
}

#[test]
fn the_server_cap_covers_the_targets() {
    let message = refused(&with(
        json!({"spec": {"shared": 2, "hotPool": {"idle": 5, "maxServers": 6}}}),
    ));
    assert!(message.contains("maxServers"), "{message}");
}

#[test]
fn claim_ttl_cluster_and_user_are_bounded() {
    let claim = |spec: serde_json::Value| -> SparkConnectClaim {
        serde_json::from_value(json!({"apiVersion": "sparkconnect.dev/v1alpha1", "kind": "SparkConnectClaim", "metadata": {"name": "c"}, "spec": spec})).unwrap()
    };
    let message = claim(json!({"cluster": "a", "ttl": "99999999999999999999h"}))
        .validate_cel()
        .unwrap_err()
        .to_string();
    assert!(message.contains("ttl must be a duration"), "{message}");
    assert!(
        claim(json!({"cluster": "Not_A_Name"}))
            .validate_cel()
            .unwrap_err()
            .to_string()
            .contains("DNS-1035")
    );
    assert!(
        claim(json!({"cluster": "a", "user": "bob\u{7}"}))
            .validate_cel()
            .unwrap_err()
            .to_string()
            .contains("control characters")
    );
    claim(json!({"cluster": "a", "user": "alice@example.com", "ttl": "8h"}))
        .validate_cel()
        .unwrap();
}

#[test]
fn schedule_windows_are_cron_with_named_weekdays_and_fit_the_pool() {
    let window = |start: &str, idle: i32| {
        with(json!({"spec": {"hotPool": {"schedule": [
            {"start": start, "duration": "8h", "idle": idle, "timeZone": "Europe/Berlin"}
        ]}}}))
    };
    window("0 9 * * Mon-Fri", 3).validate_cel().unwrap();
    window("30 0 14 26 11 *", 3).validate_cel().unwrap();
    assert!(refused(&window("0 9 * * 1-5", 3)).contains("name days of the week"));
    assert!(refused(&window("every morning", 3)).contains("cron expression of 5 fields"));
    assert!(refused(&window("0 9 * *", 3)).contains("cron expression of 5 fields"));
    let too_many = refused(&window("0 9 * * Mon-Fri", 50));
    assert!(too_many.contains("at most hotPool.max"), "{too_many}");
    let over_cap = with(
        json!({"spec": {"hotPool": {"max": 200, "maxServers": 10, "schedule": [
            {"start": "0 9 * * *", "duration": "1h", "idle": 50}
        ]}}}),
    );
    assert!(refused(&over_cap).contains("every hotPool.schedule window"));
    let endless = with(json!({"spec": {"hotPool": {"schedule": [
        {"start": "0 9 * * *", "duration": "9000h", "idle": 1}
    ]}}}));
    assert!(refused(&endless).contains("hotPool.schedule[].duration"));
}

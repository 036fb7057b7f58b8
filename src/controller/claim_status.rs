//! What a claim's status says: Bound to a server, or not (a final phase or Pending with a
//! reason), always with its `Bound` condition; written only when it changed.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::apply::{Precondition, write_status_if_changed};
use super::conditions::set_condition;
use super::context::Context;
use crate::crd::{ClaimPhase, SparkConnectClaim, SparkConnectClaimStatus};
use crate::error::Error;

/// The condition a claim carries.
pub const BOUND: &str = "Bound";

/// Gives a claim a final phase (or Pending with a reason) and its Bound condition; returns
/// whether it wrote. The decision was made on the copy `claim`: if the claim changed since (a
/// bind made meanwhile), nothing is written, and that change brings a fresh look.
pub async fn finish_claim(
    ctx: &Context,
    claim: &SparkConnectClaim,
    phase: ClaimPhase,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Result<bool, Error> {
    let mut status = claim.status.clone().unwrap_or_default();
    status.phase = phase;
    set_condition(
        &mut status.conditions,
        BOUND,
        false,
        reason,
        message.into(),
        claim.metadata.generation,
        now,
    );
    write_status_if_changed(
        &ctx.client,
        claim,
        claim.status.as_ref(),
        &status,
        Precondition::VersionRead,
    )
    .await
}

/// The status of a claim bound to `server`.
pub fn bound_status(
    claim: &SparkConnectClaim,
    server: &str,
    endpoint: String,
    token_secret: Option<String>,
    waited_millis: i64,
    now: Timestamp,
) -> SparkConnectClaimStatus {
    let mut status = claim.status.clone().unwrap_or_default();
    status.phase = ClaimPhase::Bound;
    status.server = Some(server.into());
    status.endpoint = Some(endpoint);
    status.token_secret = token_secret;
    status.bound_at = Some(Time(now));
    status.wait_millis = Some(waited_millis);
    set_condition(
        &mut status.conditions,
        BOUND,
        true,
        "Bound",
        format!("bound to server {server}"),
        claim.metadata.generation,
        now,
    );
    status
}

/// A write to an object that is gone meanwhile (404) is not a failure: it did not write.
pub fn ignore_gone(result: Result<bool, Error>) -> Result<bool, Error> {
    match result {
        Err(e) if e.api_code() == Some(404) => Ok(false),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::stores::Held;
    use crate::test_support::{answer_next_with_conflict, context_over};
    use serde_json::json;

    #[tokio::test]
    async fn a_final_phase_decided_on_an_old_copy_does_not_overwrite_a_newer_status() {
        let claim: SparkConnectClaim = serde_json::from_value(json!({
            "apiVersion": "sparkconnect.dev/v1alpha1", "kind": "SparkConnectClaim",
            "metadata": {"name": "late", "namespace": "ns", "uid": "uid-late", "resourceVersion": "12"},
            "spec": {"cluster": "c"}}))
        .unwrap();
        let (ctx, apiserver) = context_over(Held::default(), "ns");
        // Bound meanwhile: the apiserver refuses a write made on the old copy.
        let answered = tokio::spawn(answer_next_with_conflict(apiserver));
        let wrote = finish_claim(
            &ctx,
            &claim,
            ClaimPhase::Failed,
            "WaitTimeout",
            "no server became free",
            Timestamp::now(),
        )
        .await
        .expect("a conflict is not an error");
        assert!(!wrote, "nothing was written: the caller reports nothing");
        let (_, body) = answered.await.unwrap();
        assert_eq!(body["metadata"]["resourceVersion"], "12", "{body}");
        assert_eq!(body["status"]["phase"], "Failed", "{body}");
    }
}

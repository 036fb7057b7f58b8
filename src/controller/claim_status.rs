//! What a claim's status says: Bound to a server, or not (a final phase or Pending with a
//! reason), always with its `Bound` condition; written only when it changed.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::apply::write_status_if_changed;
use super::conditions::set_condition;
use super::context::Context;
use crate::crd::{ClaimPhase, SparkConnectClaim, SparkConnectClaimStatus};
use crate::error::Error;

/// The condition a claim carries.
pub const BOUND: &str = "Bound";

/// Gives a claim a final phase (or Pending with a reason) and its Bound condition.
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
    write_status_if_changed(&ctx.client, claim, claim.status.as_ref(), &status).await
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

/// A write to an object that is gone meanwhile (404) is not a failure.
pub fn ignore_gone(result: Result<bool, Error>) -> Result<(), Error> {
    match result {
        Err(e) if e.api_code() == Some(404) => Ok(()),
        other => other.map(|_| ()),
    }
}

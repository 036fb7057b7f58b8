//! The claim controller: binding happens in the cluster reconcile (one place decides, first
//! come first served); this controller only reports claims that name no existing cluster.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::Context;
use super::binding::{BOUND, write_claim_status};
use super::claim_plan::phase;
use super::conditions::set_condition;
use crate::crd::{SparkConnectClaim, SparkConnectCluster};
use crate::error::Error;

const CONTROLLER: &str = "claim";

/// Reconciles one claim.
pub async fn reconcile(claim: Arc<SparkConnectClaim>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics
        .reconciles
        .with_label_values(&[CONTROLLER])
        .inc();
    let ns = claim
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let exists = clusters
        .get_opt(&claim.spec.cluster)
        .await
        .map_err(|e| Error::kube(format!("get cluster {}", claim.spec.cluster), e))?
        .is_some();
    if exists {
        return Ok(Action::await_change());
    }
    let mut status = claim.status.clone().unwrap_or_default();
    if status.phase.is_empty() || status.phase == phase::PENDING {
        status.phase = phase::PENDING.into();
        let message = format!(
            "SparkConnectCluster {} does not exist in namespace {ns}",
            claim.spec.cluster
        );
        set_condition(
            &mut status.conditions,
            BOUND,
            false,
            "ClusterNotFound",
            message.clone(),
            claim.metadata.generation,
            Timestamp::now(),
        );
        if write_claim_status(&Api::namespaced(ctx.client.clone(), &ns), &claim, status).await? {
            ctx.event(
                claim.as_ref(),
                EventType::Warning,
                "ClusterNotFound",
                &message,
            )
            .await;
        }
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Retry policy of the claim controller.
pub fn error_policy(claim: Arc<SparkConnectClaim>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(claim = %claim.name_any(), %error, "claim reconcile failed");
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[CONTROLLER, error.metric_label()])
        .inc();
    if error.is_permanent() {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(5))
    }
}

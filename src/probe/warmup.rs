//! The warm-up of a new server: a few small queries over the Connect protocol (`ExecutePlan`),
//! results collected as Arrow and dropped, on a session of its own that is released after.
//! It touches what a user's first query would otherwise find cold: the SQL parser and
//! analyzer, the planner of the relations a DataFrame client sends, code generation, the
//! scheduler and its executors (shuffles, a global sort), and the Arrow path.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::client::{ConnectProbe, FailureKind, PROBE_USER};
use super::dataframe::{alias, call, col, lit, range};
use crate::proto::{
    ExecutePlanRequest, Plan, ReattachOptions, Relation, ReleaseExecuteRequest, Sql,
    execute_plan_request, execute_plan_response, plan, relation, release_execute_request,
};

/// The SQL queries of the built-in set.
const BUILT_IN_SQL: [&str; 3] = [
    "SELECT 1 AS warm",
    "SELECT k, count(*) AS n, sum(v) AS total FROM (SELECT id % 16 AS k, id AS v FROM range(0, 200000, 1, 4)) GROUP BY k ORDER BY k",
    "SELECT id, CAST(id AS STRING) AS text, id * 0.5 AS half, id % 2 = 0 AS even FROM range(0, 20000)",
];

/// The built-in set, built once: every cluster that names no queries shares it.
static BUILT_IN_STEPS: LazyLock<Arc<[Relation]>> = LazyLock::new(|| build_built_in().into());

/// The built-in set: the SQL queries, then the same kinds of work as a DataFrame client sends
/// them (a group-by with a shuffle and a global sort; a filter, select and limit).
pub fn built_in_steps() -> Arc<[Relation]> {
    BUILT_IN_STEPS.clone()
}

fn build_built_in() -> Vec<Relation> {
    let mut steps: Vec<Relation> = BUILT_IN_SQL.iter().map(|q| sql(q)).collect();
    steps.push(
        range(0, 200_000, 4)
            .select(vec![
                alias(call("%", vec![col("id"), lit(11)]), "k"),
                alias(call("*", vec![col("id"), lit(2)]), "v"),
            ])
            .group_by(
                vec![col("k")],
                vec![
                    alias(call("count", vec![lit(1)]), "n"),
                    alias(call("sum", vec![col("v")]), "total"),
                ],
            )
            .order_by(vec![col("k")]),
    );
    steps.push(
        range(0, 20_000, 2)
            .filter(call(">", vec![col("id"), lit(10)]))
            .select(vec![
                col("id"),
                alias(
                    call("=", vec![call("%", vec![col("id"), lit(2)]), lit(0)]),
                    "even",
                ),
            ])
            .limit(1000),
    );
    steps
}

/// A SQL query as a relation.
fn sql(query: &str) -> Relation {
    Relation {
        common: None,
        rel_type: Some(relation::RelType::Sql(Sql {
            query: query.to_string(),
        })),
    }
}

/// What a cluster's servers run before they become idle.
#[derive(Clone, Debug, PartialEq)]
pub struct WarmupPlan {
    /// The queries, in order.
    pub steps: Arc<[Relation]>,
    /// How many sessions run them, one after another (at least one).
    pub sessions: usize,
    /// Deadline of the whole warm-up.
    pub timeout: Duration,
}

impl WarmupPlan {
    /// The plan for SQL `queries` (the built-in set when empty), run in `sessions` sessions.
    pub fn new(queries: &[String], sessions: usize, timeout: Duration) -> Self {
        let steps = if queries.is_empty() {
            built_in_steps()
        } else {
            queries.iter().map(|q| sql(q)).collect::<Vec<_>>().into()
        };
        Self {
            steps,
            sessions: sessions.max(1),
            timeout,
        }
    }
}

/// A finished warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WarmedUp {
    /// Wall time of every query together.
    pub took: Duration,
    /// Rows the queries returned.
    pub rows: u64,
}

/// A failed warm-up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("warm-up query {query} of {of}: {message}")]
pub struct WarmupFailure {
    /// 1-based number of the query that failed.
    pub query: usize,
    /// How many queries the plan has.
    pub of: usize,
    /// Spark's or the transport's message.
    pub message: String,
    /// Whether the server refused the token.
    pub unauthenticated: bool,
}

/// The `round`-th warm-up session of a server: distinct from its probe session, released when
/// done.
fn warmup_session(probe: &ConnectProbe, round: usize) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{}/warm-up/{round}", probe.session()).as_bytes(),
    )
    .to_string()
}

/// Runs `plan` on the server behind `probe`: every query in each of its sessions, each session
/// released after.
pub async fn warm_up(probe: &ConnectProbe, plan: &WarmupPlan) -> Result<WarmedUp, WarmupFailure> {
    let started = Instant::now();
    let deadline = started + plan.timeout;
    let mut rows = 0;
    for round in 0..plan.sessions {
        let session = warmup_session(probe, round);
        let session_started = Instant::now();
        let outcome = run_session(probe, plan, &session, deadline).await;
        tracing::debug!(round, took = ?session_started.elapsed(), ok = outcome.is_ok(), "warm-up session done");
        if let Err(e) = probe.release_session(&session).await {
            tracing::debug!(error = %e.message, "releasing a warm-up session failed");
        }
        rows += outcome?;
    }
    Ok(WarmedUp {
        took: started.elapsed(),
        rows,
    })
}

/// Every query of `plan` in `session`, stopping at the first failure; the rows returned.
async fn run_session(
    probe: &ConnectProbe,
    plan: &WarmupPlan,
    session: &str,
    deadline: Instant,
) -> Result<u64, WarmupFailure> {
    let mut rows = 0;
    for (index, step) in plan.steps.iter().enumerate() {
        let fail = |message: String, unauthenticated: bool| WarmupFailure {
            query: index + 1,
            of: plan.steps.len(),
            message,
            unauthenticated,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, run_query(probe, session, step, left)).await {
            Ok(Ok(n)) => rows += n,
            Ok(Err((message, unauthenticated))) => return Err(fail(message, unauthenticated)),
            Err(_) => {
                return Err(fail(
                    format!("the warm-up did not finish within {:?}", plan.timeout),
                    false,
                ));
            }
        }
    }
    Ok(rows)
}

/// One query: its whole result stream read; the rows counted. Errors carry whether the server
/// refused the token.
async fn run_query(
    probe: &ConnectProbe,
    session: &str,
    step: &Relation,
    timeout: Duration,
) -> Result<u64, (String, bool)> {
    // Reattachable, as DataFrame clients run every query, and released once read.
    let operation_id = uuid::Uuid::new_v4().to_string();
    let message = ExecutePlanRequest {
        session_id: session.to_string(),
        user_context: ConnectProbe::user_context(),
        plan: Some(Plan {
            op_type: Some(plan::OpType::Root(step.clone())),
        }),
        client_type: Some(PROBE_USER.into()),
        request_options: vec![execute_plan_request::RequestOption {
            request_option: Some(
                execute_plan_request::request_option::RequestOption::ReattachOptions(
                    ReattachOptions { reattachable: true },
                ),
            ),
        }],
        operation_id: Some(operation_id.clone()),
        tags: vec!["spark-connect-operator-warm-up".into()],
        client_observed_server_side_session_id: None,
    };
    let request = probe
        .request_within(message, timeout)
        .map_err(|e| (e.message, false))?;
    let status = |s: tonic::Status| {
        let unauthenticated = FailureKind::of(s.code()) == FailureKind::Unauthenticated;
        (s.message().to_string(), unauthenticated)
    };
    let mut stream = probe
        .client()
        .execute_plan(request)
        .await
        .map_err(status)?
        .into_inner();
    let mut rows = 0u64;
    while let Some(response) = stream.next().await {
        if let Some(execute_plan_response::ResponseType::ArrowBatch(batch)) =
            response.map_err(status)?.response_type
        {
            rows = rows.saturating_add(u64::try_from(batch.row_count).unwrap_or(0));
        }
    }
    release_execute(probe, session, operation_id, timeout).await;
    Ok(rows)
}

/// Releases a finished reattachable execution; a failure only leaves it to the session's
/// release.
async fn release_execute(
    probe: &ConnectProbe,
    session: &str,
    operation_id: String,
    timeout: Duration,
) {
    let message = ReleaseExecuteRequest {
        session_id: session.to_string(),
        user_context: ConnectProbe::user_context(),
        operation_id,
        client_type: Some(PROBE_USER.into()),
        release: Some(release_execute_request::Release::ReleaseAll(
            release_execute_request::ReleaseAll {},
        )),
        client_observed_server_side_session_id: None,
    };
    let released = match probe.request_within(message, timeout) {
        Ok(request) => probe
            .client()
            .release_execute(request)
            .await
            .map(drop)
            .map_err(|s| s.message().to_string()),
        Err(e) => Err(e.message),
    };
    if let Err(message) = released {
        tracing::debug!(%message, "releasing a warm-up execution failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::client::session_id;
    use crate::probe::fake::{FAILING_QUERY_MARK, FakeOptions, FakeState, serve};
    use std::sync::Arc;

    async fn fake(token: Option<&str>) -> (Arc<FakeState>, ConnectProbe) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let state = FakeState::with_options(FakeOptions {
            token: Some("secret".into()),
            query_delay: Duration::from_millis(20),
            ..FakeOptions::default()
        });
        tokio::spawn(serve(listener, state.clone(), std::future::pending()));
        let probe = ConnectProbe::new(
            &address,
            token.map(String::from),
            session_id("uid-1"),
            Duration::from_secs(2),
        )
        .unwrap();
        (state, probe)
    }

    #[tokio::test]
    async fn the_built_in_warm_up_runs_every_query_and_releases_its_session() {
        let (state, probe) = fake(Some("secret")).await;
        let sessions = 4;
        let plan = WarmupPlan::new(&[], sessions, Duration::from_secs(5));
        assert!(
            plan.steps
                .iter()
                .any(|s| !matches!(s.rel_type, Some(relation::RelType::Sql(_)))),
            "the built-in set takes the DataFrame path too"
        );
        let done = warm_up(&probe, &plan).await.unwrap();
        let runs = 5 * sessions;
        assert_eq!(state.queries_run(), runs, "every query in every session");
        assert_eq!(
            done.rows, runs as u64,
            "one row per query from the fake server"
        );
        assert!(
            done.took >= Duration::from_millis(100),
            "took {:?}",
            done.took
        );
        assert_eq!(
            state.sessions_opened(),
            sessions,
            "each round runs in a session of its own"
        );
        assert_eq!(
            state.session_count(),
            0,
            "the warm-up sessions are released"
        );
        assert_eq!(
            (state.released_executions(), state.unreleased_executions()),
            (runs, 0),
            "every query ran reattachable and was released"
        );
    }

    #[tokio::test]
    async fn a_failing_query_names_its_number_and_spark_s_message() {
        let (state, probe) = fake(Some("secret")).await;
        let queries = vec![
            "SELECT 1".to_string(),
            format!("SELECT * FROM {FAILING_QUERY_MARK}"),
            "SELECT 3".to_string(),
        ];
        let failure = warm_up(
            &probe,
            &WarmupPlan::new(&queries, 1, Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
        assert_eq!((failure.query, failure.of), (2, 3));
        assert!(
            failure.message.contains("TABLE_OR_VIEW_NOT_FOUND"),
            "{failure}"
        );
        assert!(!failure.unauthenticated);
        assert_eq!(
            state.queries_run(),
            1,
            "nothing runs after the failed query"
        );
    }

    #[tokio::test]
    async fn a_warm_up_past_its_deadline_fails_and_a_wrong_token_is_told_apart() {
        let (_, probe) = fake(Some("secret")).await;
        let slow = warm_up(&probe, &WarmupPlan::new(&[], 1, Duration::from_millis(30)))
            .await
            .unwrap_err();
        assert!(slow.message.contains("did not finish"), "{slow}");
        let (_, stranger) = fake(Some("wrong")).await;
        let refused = warm_up(&stranger, &WarmupPlan::new(&[], 1, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(refused.unauthenticated, "{refused}");
    }
}

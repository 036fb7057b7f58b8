//! The audit trail: one JSON line per call (allowed, denied or refused), written to stdout and
//! optionally appended to a file by one writer task, so calls never wait on the disk.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::wire;

/// How SQL text appears in audit lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SqlPolicy {
    /// The query as written.
    Text,
    /// `sha256:<hex>` of the query.
    Hash,
    /// Not at all.
    None,
}

/// One audited call.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct AuditRecord {
    /// When the call started (RFC 3339).
    pub time: String,
    /// The authenticated user (empty when authentication failed).
    pub user: String,
    /// Their groups.
    pub groups: Vec<String>,
    /// `namespace/name`, once chosen.
    pub cluster: Option<String>,
    /// The server the call went to.
    pub server: Option<String>,
    /// Spark session id.
    pub session_id: Option<String>,
    /// Spark operation id (ExecutePlan, ReattachExecute, ReleaseExecute, Interrupt).
    pub operation_id: Option<String>,
    /// The RPC, e.g. `ExecutePlan`.
    pub rpc: String,
    /// For ExecutePlan: `relation:<type>` or `command:<type>`.
    pub plan: Option<String>,
    /// For SQL: the text or its hash, per policy.
    pub sql: Option<String>,
    /// ok, error, unauthenticated, denied, refused, cancelled or unavailable.
    pub outcome: String,
    /// The gRPC status code.
    pub grpc_status: i32,
    /// The gRPC status message, when not OK.
    pub message: Option<String>,
    /// Milliseconds from the request to the end of the response.
    pub duration_ms: f64,
    /// Request bytes received from the client.
    pub bytes_in: u64,
    /// Response bytes sent to the client.
    pub bytes_out: u64,
    /// The gateway replica.
    pub gateway: String,
}

/// Sends records to the writer task.
#[derive(Clone)]
pub struct AuditLog {
    sender: mpsc::UnboundedSender<AuditRecord>,
}

impl AuditLog {
    /// Starts the writer: stdout always, and `file` (appended) when given.
    pub fn start(file: Option<PathBuf>) -> std::io::Result<(Self, tokio::task::JoinHandle<()>)> {
        let mut sink = match &file {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => None,
        };
        let (sender, mut receiver) = mpsc::unbounded_channel::<AuditRecord>();
        let writer = tokio::task::spawn_blocking(move || {
            let stdout = std::io::stdout();
            while let Some(record) = receiver.blocking_recv() {
                let Ok(mut line) = serde_json::to_vec(&AuditLine { audit: &record }) else {
                    continue;
                };
                line.push(b'\n');
                let _ = stdout.lock().write_all(&line);
                if let Some(file) = sink.as_mut()
                    && let Err(e) = file.write_all(&line)
                {
                    tracing::error!(error = %e, "writing the audit file failed");
                }
            }
        });
        Ok((Self { sender }, writer))
    }

    /// Records a call.
    pub fn record(&self, record: AuditRecord) {
        let _ = self.sender.send(record);
    }
}

/// The line's shape: `{"audit": {...}}`, easy to tell from log lines on the same stream.
#[derive(Serialize)]
struct AuditLine<'a> {
    audit: &'a AuditRecord,
}

/// `Plan.root`, `Plan.command`.
const PLAN_ROOT: u32 = 1;
const PLAN_COMMAND: u32 = 2;
/// `Relation.common`, `Relation.sql`, `SQL.query`.
const RELATION_COMMON: u32 = 1;
const RELATION_SQL: u32 = 10;
const SQL_QUERY: u32 = 1;
/// `Command.sql_command`, `SqlCommand.sql`, `SqlCommand.input`.
const COMMAND_SQL: u32 = 5;
const SQL_COMMAND_TEXT: u32 = 1;
const SQL_COMMAND_INPUT: u32 = 6;
/// `ExecutePlanRequest.plan`, `.operation_id`.
const EXECUTE_PLAN: u32 = 3;
const EXECUTE_OPERATION_ID: u32 = 6;

/// The name of a `Relation` type by its field number (the common ones; others by number).
fn relation_type(number: u32) -> String {
    let name = match number {
        2 => "read",
        3 => "project",
        4 => "filter",
        5 => "join",
        6 => "set_op",
        7 => "sort",
        8 => "limit",
        9 => "aggregate",
        10 => "sql",
        11 => "local_relation",
        15 => "range",
        20 => "show_string",
        22 => "tail",
        200 => "catalog",
        _ => return format!("#{number}"),
    };
    name.into()
}

fn command_type(number: u32) -> String {
    let name = match number {
        1 => "register_function",
        2 => "write_operation",
        3 => "create_dataframe_view",
        4 => "write_operation_v2",
        5 => "sql_command",
        6 => "write_stream_operation_start",
        _ => return format!("#{number}"),
    };
    name.into()
}

fn policy_text(policy: SqlPolicy, sql: String) -> Option<String> {
    match policy {
        SqlPolicy::Text => Some(sql),
        SqlPolicy::Hash => {
            let digest = Sha256::digest(sql.as_bytes());
            Some(format!(
                "sha256:{}",
                digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ))
        }
        SqlPolicy::None => None,
    }
}

/// What the audit line says about a call's first request message: operation id, plan kind and
/// SQL (ExecutePlan), or the operation id of ReattachExecute/ReleaseExecute (field 3) and
/// Interrupt (field 6).
pub fn describe(
    rpc: &str,
    message: &[u8],
    policy: SqlPolicy,
) -> (Option<String>, Option<String>, Option<String>) {
    match rpc {
        "ExecutePlan" => {
            let operation = wire::string_field(message, EXECUTE_OPERATION_ID);
            let Some(plan) = wire::message_field(message, EXECUTE_PLAN) else {
                return (operation, None, None);
            };
            if let Some(root) = wire::message_field(plan, PLAN_ROOT) {
                let kind = wire::first_field(root, RELATION_COMMON);
                let sql = wire::message_field(root, RELATION_SQL)
                    .and_then(|sql| wire::string_field(sql, SQL_QUERY));
                return (
                    operation,
                    kind.map(|k| format!("relation:{}", relation_type(k))),
                    sql.and_then(|s| policy_text(policy, s)),
                );
            }
            if let Some(command) = wire::message_field(plan, PLAN_COMMAND) {
                let kind = wire::first_field(command, 0);
                let sql = wire::message_field(command, COMMAND_SQL).and_then(|c| {
                    wire::string_field(c, SQL_COMMAND_TEXT)
                        .filter(|s| !s.is_empty())
                        .or_else(|| {
                            wire::message_field(c, SQL_COMMAND_INPUT)
                                .and_then(|input| wire::message_field(input, RELATION_SQL))
                                .and_then(|sql| wire::string_field(sql, SQL_QUERY))
                        })
                });
                return (
                    operation,
                    kind.map(|k| format!("command:{}", command_type(k))),
                    sql.and_then(|s| policy_text(policy, s)),
                );
            }
            (operation, None, None)
        }
        "ReattachExecute" | "ReleaseExecute" => (wire::string_field(message, 3), None, None),
        "Interrupt" => (wire::string_field(message, 6), None, None),
        _ => (None, None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    use crate::proto;

    fn execute(sql: &str) -> Vec<u8> {
        proto::ExecutePlanRequest {
            session_id: "s".into(),
            operation_id: Some("op-1".into()),
            plan: Some(proto::Plan {
                op_type: Some(proto::plan::OpType::Root(proto::Relation {
                    common: None,
                    rel_type: Some(proto::relation::RelType::Sql(proto::Sql {
                        query: sql.into(),
                    })),
                })),
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn an_sql_plan_is_described_by_its_kind_and_text_or_hash() {
        let message = execute("SELECT 1");
        let (operation, plan, sql) = describe("ExecutePlan", &message, SqlPolicy::Text);
        assert_eq!(operation.as_deref(), Some("op-1"));
        assert_eq!(plan.as_deref(), Some("relation:sql"));
        assert_eq!(sql.as_deref(), Some("SELECT 1"));
        let (_, _, hashed) = describe("ExecutePlan", &message, SqlPolicy::Hash);
        let hashed = hashed.expect("a hash");
        assert!(hashed.starts_with("sha256:") && !hashed.contains("SELECT"));
        let (_, _, none) = describe("ExecutePlan", &message, SqlPolicy::None);
        assert_eq!(none, None);
    }
}

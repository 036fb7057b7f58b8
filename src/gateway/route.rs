//! Where a call goes, decided without I/O: which cluster (from the `cluster` connection
//! parameter, the route table or a token claim), which shared server a session sticks to, and
//! the name of a user's dedicated claim. Every replica decides the same from the same inputs.

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest, Sha256};

use super::authn::Identity;

/// A cluster by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ClusterRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why no cluster could be chosen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Nothing names a cluster.
    #[error(
        "no cluster chosen: connect with ;cluster=<name>.<namespace> (or a name in namespace {0})"
    )]
    NoCluster(String),
    /// The parameter is not a valid reference.
    #[error("cluster {0:?} is not <name>.<namespace>, <namespace>/<name> or <name> (DNS labels)")]
    Invalid(String),
}

/// How clusters are chosen when the caller names none, or names one without a namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Namespace of a bare cluster name when no token claim names one.
    pub default_namespace: String,
    /// Cluster name used when the caller's token claim names a namespace but no cluster is named.
    pub default_cluster: Option<String>,
    /// Group → cluster, for callers that name no cluster (the first group in this order wins).
    pub groups: BTreeMap<String, ClusterRef>,
}

fn is_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

impl RouteTable {
    /// The cluster for a caller and the `cluster` parameter it sent (if any).
    pub fn choose(
        &self,
        who: &Identity,
        parameter: Option<&str>,
    ) -> Result<ClusterRef, RouteError> {
        let home = who
            .namespace_claim
            .clone()
            .unwrap_or_else(|| self.default_namespace.clone());
        if let Some(text) = parameter.map(str::trim).filter(|t| !t.is_empty()) {
            // pyspark's URL parser cuts parameters at a '/', so `<name>.<namespace>` (as in DNS)
            // is the spelling that works from pyspark; `<namespace>/<name>` works from others.
            let (namespace, name) = match (text.split_once('/'), text.split_once('.')) {
                (Some((ns, name)), _) => (ns.to_string(), name.to_string()),
                (None, Some((name, ns))) => (ns.to_string(), name.to_string()),
                (None, None) => (home, text.to_string()),
            };
            if !is_label(&namespace) || !is_label(&name) {
                return Err(RouteError::Invalid(text.chars().take(80).collect()));
            }
            return Ok(ClusterRef { namespace, name });
        }
        if let Some(cluster) = self
            .groups
            .iter()
            .find(|(group, _)| who.groups.contains(group))
            .map(|(_, cluster)| cluster.clone())
        {
            return Ok(cluster);
        }
        match (&who.namespace_claim, &self.default_cluster) {
            (Some(namespace), Some(name)) if is_label(namespace) => Ok(ClusterRef {
                namespace: namespace.clone(),
                name: name.clone(),
            }),
            _ => Err(RouteError::NoCluster(self.default_namespace.clone())),
        }
    }
}

/// The shared server a session sticks to: rendezvous hashing, so every replica picks the same
/// one and a server going away moves only its own sessions.
pub fn pick_shared<'a>(servers: &'a [String], session: &str) -> Option<&'a String> {
    servers.iter().max_by_key(|server| {
        let digest = Sha256::new()
            .chain_update(server.as_bytes())
            .chain_update([0])
            .chain_update(session.as_bytes())
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    })
}

/// A short, stable hash of a user name, usable in names and label values.
pub fn user_key(user: &str) -> String {
    let digest = Sha256::digest(user.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The name of the gateway's claim for `user` on cluster `cluster` (one per user and cluster,
/// so every replica finds the same claim).
pub fn claim_name(cluster: &str, user: &str) -> String {
    let digest = Sha256::new()
        .chain_update(cluster.as_bytes())
        .chain_update([0])
        .chain_update(user.as_bytes())
        .finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("gw-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(groups: &[&str], team: Option<&str>) -> Identity {
        Identity {
            user: "alice".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            namespace_claim: team.map(Into::into),
        }
    }

    fn table() -> RouteTable {
        RouteTable {
            default_namespace: "spark".into(),
            default_cluster: Some("main".into()),
            groups: BTreeMap::from([(
                "oidc:analysts".into(),
                ClusterRef {
                    namespace: "analytics".into(),
                    name: "adhoc".into(),
                },
            )]),
        }
    }

    #[test]
    fn the_cluster_parameter_wins_and_a_bare_name_uses_the_callers_namespace() {
        let t = table();
        assert_eq!(
            t.choose(&who(&["oidc:analysts"], None), Some("team-a/etl"))
                .map(|c| c.to_string()),
            Ok("team-a/etl".into())
        );
        assert_eq!(
            t.choose(&who(&[], Some("science")), Some("etl"))
                .map(|c| c.to_string()),
            Ok("science/etl".into())
        );
        assert_eq!(
            t.choose(&who(&[], None), Some("etl"))
                .map(|c| c.to_string()),
            Ok("spark/etl".into())
        );
    }

    #[test]
    fn groups_then_the_team_claim_route_callers_that_name_no_cluster() {
        let t = table();
        assert_eq!(
            t.choose(&who(&["oidc:analysts"], Some("x")), None)
                .map(|c| c.to_string()),
            Ok("analytics/adhoc".into())
        );
        assert_eq!(
            t.choose(&who(&[], Some("science")), None)
                .map(|c| c.to_string()),
            Ok("science/main".into())
        );
        assert!(matches!(
            t.choose(&who(&[], None), None),
            Err(RouteError::NoCluster(_))
        ));
    }

    #[test]
    fn hostile_cluster_parameters_are_refused() {
        let t = table();
        for bad in [
            "../etc",
            "a/b/c",
            "a.b.c",
            "UPPER",
            "x/",
            "-a",
            &"a".repeat(64),
        ] {
            assert!(t.choose(&who(&[], None), Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_session_sticks_to_one_server_and_only_its_servers_sessions_move() {
        let servers: Vec<String> = (0..4).map(|i| format!("s{i}")).collect();
        let sessions: Vec<String> = (0..200).map(|i| format!("session-{i}")).collect();
        let before: Vec<&String> = sessions
            .iter()
            .map(|s| pick_shared(&servers, s).expect("a server"))
            .collect();
        assert!(
            servers.iter().all(|s| before.contains(&s)),
            "spread over all"
        );
        let fewer: Vec<String> = servers[..3].to_vec();
        for (session, was) in sessions.iter().zip(&before) {
            let now = pick_shared(&fewer, session).expect("a server");
            if *was != "s3" {
                assert_eq!(now, *was, "{session} moved although its server stayed");
            }
        }
        assert_eq!(pick_shared(&[], "x"), None);
    }

    #[test]
    fn claim_names_are_stable_distinct_and_valid() {
        assert_eq!(claim_name("c", "alice"), claim_name("c", "alice"));
        assert_ne!(claim_name("c", "alice"), claim_name("c", "bob"));
        assert_ne!(claim_name("c", "alice"), claim_name("d", "alice"));
        assert!(is_label(&claim_name("c", "alice")));
        assert_eq!(user_key("alice").len(), 16);
    }
}

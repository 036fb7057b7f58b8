//! The operator's one error type.

/// What failed during a reconcile or a probe.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec is valid to the schema but cannot be run; waits for the user to change it.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// An object lacks a field the apiserver always sets.
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),
    /// A Kubernetes API call failed.
    #[error("{action} failed: {source}")]
    Kube {
        /// What the operator was doing.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// An object could not be (de)serialized.
    #[error("serialization failed: {0}")]
    Serialization(#[from] serde_json::Error),
    /// An object of the name the operator needs exists and is not the cluster's own.
    #[error(
        "{kind} {name} already exists and is not owned by this cluster; rename the cluster or remove that {kind}"
    )]
    NotOwned {
        /// Its kind.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Other writers kept changing an object the operator writes conditionally.
    #[error("{0} kept changing while it was written; trying again")]
    Contended(String),
    /// A reconcile panicked; the panic was caught and this object backs off.
    #[error("reconcile panicked: {0}")]
    Panicked(String),
    /// A reconcile took longer than its deadline and was cancelled.
    #[error("reconcile did not finish within {0:?}")]
    TimedOut(std::time::Duration),
}

/// How an API refusal is reported to the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400 or 422: the object as built is not acceptable (names, sizes, an admission rule).
    Invalid,
    /// 403: RBAC, PodSecurity or a ResourceQuota refused it.
    Forbidden,
    /// 409 on create: something else holds the name.
    Conflict,
}

impl Refusal {
    /// Condition and Event reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Invalid => "ObjectRejected",
            Self::Forbidden => "ObjectForbidden",
            Self::Conflict => "NameConflict",
        }
    }
}

impl Error {
    /// Wraps a client error with what the operator was doing.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            action: action.into(),
            source,
        }
    }

    /// An API refusal that retrying will not fix: the user or an admin must act.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::Kube {
                source: kube::Error::Api(status),
                ..
            } => match status.code {
                400 | 422 => Some(Refusal::Invalid),
                403 => Some(Refusal::Forbidden),
                409 if status.reason == "AlreadyExists" => Some(Refusal::Conflict),
                _ => None,
            },
            Self::NotOwned { .. } => Some(Refusal::Conflict),
            _ => None,
        }
    }

    /// A short message for a person (a condition or an Event): for API errors the
    /// apiserver's own message, without the client's debug detail.
    pub fn brief(&self) -> String {
        match self {
            Self::Kube {
                action,
                source: kube::Error::Api(status),
            } => format!("{action} refused: {}", status.message),
            other => other.to_string(),
        }
    }

    /// The HTTP status of an API error, if this is one.
    pub fn api_code(&self) -> Option<u16> {
        match self {
            Self::Kube {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }

    /// Permanent errors need a spec change; transient ones are retried with backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidSpec(_) | Self::MissingObjectKey(_) | Self::Serialization(_) => true,
            Self::Kube { .. } | Self::NotOwned { .. } => self.refusal().is_some(),
            Self::Contended(_) | Self::Panicked(_) | Self::TimedOut(_) => false,
        }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "invalid_spec",
            Self::MissingObjectKey(_) => "missing_object_key",
            Self::Kube { .. } => match self.refusal() {
                Some(Refusal::Invalid) => "kube_api_invalid",
                Some(Refusal::Forbidden) => "kube_api_forbidden",
                Some(Refusal::Conflict) => "kube_api_conflict",
                None => "kube_api",
            },
            Self::NotOwned { .. } => "not_owned",
            Self::Serialization(_) => "serialization",
            Self::Contended(_) => "contended",
            Self::Panicked(_) => "panicked",
            Self::TimedOut(_) => "timed_out",
        }
    }
}

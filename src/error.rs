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
}

impl Error {
    /// Wraps a client error with what the operator was doing.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            action: action.into(),
            source,
        }
    }

    /// Permanent errors need a spec change; transient ones are retried with backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidSpec(_) | Self::MissingObjectKey(_) | Self::Serialization(_) => true,
            Self::Kube { source, .. } => {
                matches!(source, kube::Error::Api(status) if status.code == 422 || status.code == 400)
            }
        }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "invalid_spec",
            Self::MissingObjectKey(_) => "missing_object_key",
            Self::Kube { .. } => "kube_api",
            Self::Serialization(_) => "serialization",
        }
    }
}

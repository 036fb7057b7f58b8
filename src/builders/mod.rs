//! Pure builders: a validated spec in, Kubernetes objects out. No I/O here.

pub mod bind_ledger;
pub mod labels;
pub mod merge;
pub mod pod;
pub mod rbac;
pub mod secret;
pub mod service;

//! Health checks with a real Spark Connect `Config` call.

pub mod client;
pub mod dataframe;
pub mod fake;
pub mod health;
pub mod prober;
pub mod transport;
pub mod warmup;

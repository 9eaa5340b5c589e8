//! Telemetry: the access log, metrics, the observed splits, status and the admin endpoint, and
//! the process log (rate-limited for peer-caused events).

pub mod access_log;
pub mod admin;
pub mod envoy_admin;
pub mod logging;
pub mod metrics;
pub mod spans;
pub mod splits;
pub mod status;
pub mod throttle;
pub mod ui;

//! What the client reports about itself: for metrics, the admin config dump, and tests.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Mode;

/// Per type URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TypeStatus {
    /// Last ACKed `version_info` (SotW) or `system_version_info` (Delta).
    pub acked_version: String,
    /// Nonce of the last ACKed response.
    pub acked_nonce: String,
    /// Resources held (accepted).
    pub resources: usize,
    pub acks: u64,
    pub nacks: u64,
    /// The message of the last NACK, cleared by the next ACK.
    pub last_nack: Option<String>,
}

/// A snapshot of the client's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub connected: bool,
    /// The flavour in use (after any fallback).
    pub mode: Option<Mode>,
    /// Connection attempts, successful or not.
    pub connect_attempts: u64,
    /// Connections to istiod established after the first.
    pub reconnects: u64,
    pub acks: u64,
    pub nacks: u64,
    /// The last connection or stream error, kept after a successful reconnect.
    pub last_error: Option<String>,
    pub types: BTreeMap<String, TypeStatus>,
}

/// Reads the client's status; cheap to clone.
#[derive(Debug, Clone)]
pub struct StatusHandle {
    rx: watch::Receiver<Status>,
}

impl StatusHandle {
    pub(crate) fn new(rx: watch::Receiver<Status>) -> Self {
        Self { rx }
    }

    pub fn get(&self) -> Status {
        self.rx.borrow().clone()
    }

    /// Wait until `pred` holds (checked on every change), for at most `timeout`. The status that
    /// satisfied it, or `None` on timeout or when the client is gone.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Status) -> bool,
    ) -> Option<Status> {
        let mut rx = self.rx.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| pred(s))).await;
        match waited {
            Ok(Ok(status)) => Some(status.clone()),
            _ => None,
        }
    }
}

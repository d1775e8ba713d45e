//! The router as operators see it: each region's state, the switches of traffic, and why.

use serde::Serialize;

use super::{copies::ReplicationStatus, health::RegionHealth};

/// Which traffic a switch moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Traffic {
    /// Produced records.
    Writes,
    /// Subscriptions, fetches and admin reads.
    Reads,
}

impl Traffic {
    /// The name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Writes => "writes",
            Self::Reads => "reads",
        }
    }
}

/// A change of the region traffic goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Switch {
    /// When, in ms since the epoch.
    pub at_ms: i64,
    /// What moved.
    pub traffic: Traffic,
    /// The region traffic left.
    pub from: String,
    /// The region traffic went to.
    pub to: String,
    /// Why.
    pub cause: String,
}

/// One region, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionStatus {
    /// The region's name.
    pub name: String,
    /// Its health.
    pub health: RegionHealth,
    /// Since when, in ms since the epoch.
    pub since_ms: i64,
    /// Why it is in that state.
    pub cause: String,
    /// Changes of its health since the gateway started.
    pub changes: u64,
    /// Whether writes go to it.
    pub writes: bool,
    /// Whether reads go to it.
    pub reads: bool,
    /// Whether it is the region traffic prefers.
    pub preferred: bool,
    /// How far behind each other region its copies are.
    pub replication: Vec<ReplicationStatus>,
}

/// The router as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoutingStatus {
    /// `active-passive` or `active-active`.
    pub mode: &'static str,
    /// Every region, preferred first.
    pub regions: Vec<RegionStatus>,
    /// The region an operator pinned traffic to, if any.
    pub manual: Option<String>,
    /// Switches of writes or reads since the gateway started.
    pub switches: u64,
    /// The last switch.
    pub last_switch: Option<Switch>,
}

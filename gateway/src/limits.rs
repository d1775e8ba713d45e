//! What one client may take from the gateway, so that one bad client never hurts the others:
//! connections (in all, per listener, per source address, and how fast an address may open them)
//! and quotas on what a principal sends and receives.
//!
//! Modules: `config` (the `[limits]` table), `host` (the address a client is counted by),
//! `connections` (admitting a connection or refusing it, and the permit it holds while open),
//! `rate` (token buckets on tokio's clock), `quota` (the buckets of each principal, and the wait or
//! refusal over them), `creations` (the topics each caller may create by naming them). The quotas reach every protocol's produce path through one log layer,
//! `log::layers::quota`.

mod config;
mod connections;
mod creations;
mod host;
mod quota;
mod rate;

pub use config::{LimitsConfig, ListenerLimits, OverQuota, QuotaConfig, QuotaRates};
pub use connections::{ConnectionLimits, ListenerGate, Permit, Refusal};
pub use creations::{TopicCreations, charged_to};
pub use host::host;
pub use quota::{QuotaKey, QuotaRules, Quotas, Usage};

use std::sync::Arc;

/// What a front end's clients may take: the connection limits its listeners admit by, and the
/// quotas of every principal (shared by every front end, so a principal's quota covers all of its
/// connections, whatever their protocol).
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// The process's connection limits.
    pub connections: ConnectionLimits,
    /// Every principal's quotas.
    pub quotas: Arc<Quotas>,
}

impl ClientLimits {
    /// The limits of `[limits]`.
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            connections: ConnectionLimits::new(config),
            quotas: Quotas::new(&config.quotas),
        }
    }

    /// No limits (tests, and tools that serve one process's own clients).
    pub fn unlimited() -> Self {
        Self {
            connections: ConnectionLimits::unlimited(),
            quotas: Quotas::unlimited(),
        }
    }
}

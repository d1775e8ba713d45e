//! Behaviour every backend shares, as [`Log`] decorators composed once at start-up ([`stack`]), so
//! backends implement storage semantics only and a bad request fails the same way on each of them.
//!
//! From the front end inwards:
//! - [`Validated`]: checks requests (topic and group names, record sizes, reserved headers, the
//!   in-flight window) and gives records without a `courier_id` a fresh one, before anything is
//!   queued. Outermost, so nothing behind it (the region router included) sees a request it would
//!   refuse, and a record keeps one id however often the router resends it. Authorization and quotas
//!   will sit next to it: they too decide on the request alone.
//! - [`TopicPolicy`]: `topics.auto_create`. Next to the storage, and inside the region router (one
//!   per region), because "does this topic exist" is a question about one cluster: a write resent to
//!   another region must be able to create the topic there.
//!
//! The region router is itself a `Log` between the two: `Validated<Regions>` over
//! `TopicPolicy<Kafka>` per region.

mod topic_policy;
mod validation;

pub use self::{topic_policy::TopicPolicy, validation::Validated};
use super::Log;
use crate::config::TopicsConfig;

/// One backend under its layers.
pub type Stack<L> = Validated<TopicPolicy<L>>;

/// The layers over one backend: `Validated<TopicPolicy<L>>`.
pub fn stack<L: Log>(backend: L, topics: &TopicsConfig) -> Stack<L> {
    Validated::new(TopicPolicy::new(backend, topics.auto_create), topics)
}

//! Behaviour every backend shares, as [`Log`] decorators composed once at start-up ([`stack`]), so
//! backends implement storage semantics only and a bad request fails the same way on each of them.
//! Each is a [`Layer`] (what it changes of the calls through it) put in front of a log by
//! [`Layered`], which passes every other call through.
//!
//! From the front end inwards:
//! - [`Authorized`] (per connection or call, added by the front end with its principal): the
//!   policy and the protection of the gateway's own state. Outermost, in front of the front end's
//!   `Metered`, so nothing it refuses is queued or reaches the router.
//! - [`Quoted`] (per connection or call, where a quota applies): the principal's quotas on what
//!   it sends (waited for or refused) and is delivered (paced). Behind `Authorized`, so a refused
//!   request takes nothing from the quota; in front of `Metered`, so a quota's wait is not counted
//!   as the log's produce latency.
//! - [`Traced`] (per connection or call, only while tracing is on): publish and deliver spans, and
//!   the trace context carried on in each record. Behind `Quoted`, so a publish span does not
//!   include the quota's wait.
//! - [`Validated`]: checks requests (topic and group names, record sizes, reserved headers, the
//!   in-flight window) and gives records without a `courier_id` a fresh one, before anything is
//!   queued. Outermost of the shared stack, so nothing behind it (the region router included) sees
//!   a request it would refuse, and a record keeps one id however often the router resends it.
//! - [`GroupProtocols`]: one protocol per consumer group. Behind validation (it trusts the group
//!   name) and in front of the region router, so one table of this process's subscribers covers
//!   every region and a subscription keeps its place in it when the router moves it.
//! - [`TopicPolicy`]: `topics.auto_create`. Next to the storage, and inside the region router (one
//!   per region), because "does this topic exist" is a question about one cluster: a write resent to
//!   another region must be able to create the topic there.
//!
//! The region router is itself a `Log` between the two groups: [`front`] over `Regions`, over
//! `TopicPolicy<Kafka>` per region. Front ends add their own layers in front: [`Metered`], which
//! labels what it counts with their protocol, and per connection [`Authorized`] in front of that.

mod authorization;
mod group_protocol;
mod layer;
mod metered;
mod quota;
mod topic_policy;
mod traced;
mod validation;

pub use self::{
    authorization::{Authorization, Authorized, Scope},
    group_protocol::{GroupProtocols, GroupRule},
    layer::{Layer, Layered},
    metered::{Metered, Metering},
    quota::{Quota, Quoted, paced_deliveries},
    topic_policy::{TopicPolicy, TopicRule},
    traced::{Traced, Tracer},
    validation::{Validated, Validation},
};
use std::sync::Arc;

use super::Log;
use crate::{config::TopicsConfig, limits::TopicCreations};

/// The layers in front of a log that decides topic existence itself (a backend under its
/// [`TopicPolicy`], or the region router, which has one per region).
pub type Front<L> = Validated<GroupProtocols<L>>;

/// One backend under its layers.
pub type Stack<L> = Front<TopicPolicy<L>>;

/// The front layers over `log`: `Validated<GroupProtocols<L>>`.
pub fn front<L: Log>(log: L, topics: &TopicsConfig) -> Front<L> {
    Validated::new(GroupProtocols::new(log), topics)
}

/// The layers over one backend: `Validated<GroupProtocols<TopicPolicy<L>>>`.
pub fn stack<L: Log>(backend: L, topics: &TopicsConfig) -> Stack<L> {
    let creations = Arc::new(TopicCreations::per_minute(topics.auto_create_per_minute));
    front(
        TopicPolicy::new(backend, topics.auto_create, creations),
        topics,
    )
}

impl<L> Stack<L> {
    /// The backend under the layers.
    pub fn backend(&self) -> &L {
        self.inner().inner().inner()
    }
}

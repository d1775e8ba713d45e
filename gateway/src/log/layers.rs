//! Behaviour every backend shares, as [`Log`] decorators composed once at start-up ([`stack`]), so
//! backends implement storage semantics only and a bad request fails the same way on each of them.
//! Each is a [`Layer`] (what it changes of the calls through it) put in front of a log by
//! [`Layered`], which passes every other call through.
//!
//! From the front end inwards:
//! - [`Authorized`] (per connection or call, added by the front end with its principal): the
//!   policy and the protection of the gateway's own state. Outermost, in front of the front end's
//!   `Metered`, so nothing it refuses is queued or reaches the router.
//! - [`Validated`]: checks requests (topic and group names, record sizes, reserved headers, the
//!   in-flight window) and gives records without a `courier_id` a fresh one, before anything is
//!   queued. Outermost of the shared stack, so nothing behind it (the region router included) sees
//!   a request it would refuse, and a record keeps one id however often the router resends it.
//!   Quotas will sit next to it: they too decide on the request alone.
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
mod topic_policy;
mod validation;

pub use self::{
    authorization::{Authorization, Authorized, Scope},
    group_protocol::{GroupProtocols, GroupRule},
    layer::{Layer, Layered},
    metered::{Metered, Metering},
    topic_policy::{TopicPolicy, TopicRule},
    validation::{Validated, Validation},
};
use super::Log;
use crate::config::TopicsConfig;

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
    front(TopicPolicy::new(backend, topics.auto_create), topics)
}

impl<L> Stack<L> {
    /// The backend under the layers.
    pub fn backend(&self) -> &L {
        self.inner().inner().inner()
    }
}

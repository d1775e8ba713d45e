//! One subscription on Kafka: a librdkafka consumer of its own, driven by one task.
//!
//! - Group members subscribe with `cooperative-sticky` assignment. On assignment each partition starts
//!   at the group's committed offset, or where the subscriber asked (`start`) when the group has none;
//!   on revocation the acknowledged prefix is committed synchronously *before* the partition is let
//!   go, so the next owner starts right after it (`rebalance.rs`).
//! - Plain readers (no group) assign themselves every partition of the matching topics.
//! - Patterns are matched by the gateway (full-name regular expressions, as on the embedded log) against
//!   metadata read every second (`task.rs`), so new topics are picked up.
//! - At most `max_in_flight` records are outstanding (the shared [`AckWindow`]), and at most as many
//!   wait in the subscriber's queue untaken ([`events`]). Past either, fetched records wait in a
//!   local buffer (at most `buffer_limit`) and go out first when acks or the front end make room;
//!   when the buffer is full the task stops polling, so librdkafka's bounded prefetch waits ready,
//!   and if it stays full for half a second it pauses the partitions and polls again (to stay
//!   in the group and serve rebalances) (`task.rs`).
//! - Offsets are committed over the contiguous acknowledged prefix only, every
//!   `groups.commit_interval`, on request, on revocation and when the subscriber leaves (`leave.rs`).

mod leave;
mod rebalance;
mod state;
mod task;

use std::{
    collections::{BTreeSet, VecDeque},
    sync::{Arc, Mutex, atomic::AtomicBool},
};

use rdkafka::consumer::Consumer;
use tokio::sync::mpsc;

use self::{
    rebalance::{MemberConsumer, MemberContext},
    state::MemberState,
    task::MemberTask,
};
use super::{clients, codec, shared::Shared};
use crate::{
    Error, Result,
    log::{
        SubscribeOptions, Subscription, TopicSelector, events,
        member::{AckWindow, MemberControl},
    },
};

/// Starts a subscription: creates its consumer and spawns its task.
pub(super) fn start(shared: Arc<Shared>, options: SubscribeOptions) -> Result<Subscription> {
    let (events_tx, events) = events::channel(options.max_in_flight);
    let window = Arc::new(AckWindow::new(options.max_in_flight));
    let state = Arc::new(MemberState {
        shared: shared.clone(),
        group: options.group.clone(),
        start: options.start,
        window: window.clone(),
        revoked: Mutex::new(Vec::new()),
        revoke_commit: Mutex::new(None),
        paused: AtomicBool::new(false),
        has_paused: AtomicBool::new(false),
        joined: AtomicBool::new(false),
        events: events_tx,
    });
    let client_id = codec::subscriber_client_id(options.protocol, &options.client);
    let consumer: MemberConsumer =
        clients::consumer(&shared.config, options.group.as_deref(), &client_id)
            .create_with_context(MemberContext {
                state: state.clone(),
            })
            .map_err(Error::kafka("creating a consumer"))?;
    if let TopicSelector::Names(names) = &options.topics
        && options.group.is_some()
    {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(Error::kafka("subscribing"))?;
    }
    shared
        .local_members
        .register(&client_id, Arc::downgrade(&state.window));
    // Unbounded but bounded in fact: every command carries a reply its sender awaits, and a front
    // end awaits the answer before it reads its client's next request, so each has at most one here.
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let task = MemberTask {
        state,
        consumer: Arc::new(consumer),
        topics: options.topics,
        commands,
        buffer: VecDeque::new(),
        subscribed: BTreeSet::new(),
        full_since: None,
    };
    shared.subscriptions.spawn(task.run());
    Ok(Subscription {
        events,
        control: Arc::new(MemberControl::new(window, commands_tx)),
    })
}

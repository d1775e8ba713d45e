//! This gateway's own subscribers by Kafka client id, so describe-group can show their partitions when
//! the broker's DescribeGroups answer carries no member assignments (tansu 0.6.0 sends none; Apache
//! Kafka does, and then its answer is used).

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError, Weak},
};

use tokio::sync::mpsc::WeakUnboundedSender;

use crate::log::{SubscriptionEvent, TopicPartition, member::AckWindow};

#[derive(Debug, Default)]
pub(super) struct LocalMembers {
    members: Mutex<HashMap<String, LocalMember>>,
}

/// What describe-group and the group-protocol check need of a local subscriber. Weak references: the
/// table must not keep a finished subscription's window alive, nor its event stream open.
#[derive(Debug)]
pub(super) struct LocalMember {
    pub(super) group: Option<String>,
    pub(super) protocol: &'static str,
    pub(super) window: Weak<AckWindow>,
    pub(super) events: WeakUnboundedSender<SubscriptionEvent>,
}

impl LocalMember {
    /// Still subscribed: its window is held and its subscriber still reads events.
    fn is_live(&self) -> bool {
        self.window.strong_count() > 0
            && self
                .events
                .upgrade()
                .is_some_and(|events| !events.is_closed())
    }
}

impl LocalMembers {
    pub(super) fn register(&self, client_id: &str, member: LocalMember) {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        members.retain(|_, member| member.window.strong_count() > 0);
        members.insert(client_id.to_owned(), member);
    }

    /// The protocol of a live local subscriber of `group` other than `protocol`, if any. Covers
    /// subscribers that have not finished joining, which the broker does not list yet.
    pub(super) fn other_protocol(&self, group: &str, protocol: &str) -> Option<&'static str> {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        members
            .values()
            .filter(|member| member.group.as_deref() == Some(group) && member.is_live())
            .map(|member| member.protocol)
            .find(|other| *other != protocol)
    }

    /// Partitions a local subscriber holds; `None` if the client id is not one of ours.
    pub(super) fn assigned(&self, client_id: &str) -> Option<Vec<TopicPartition>> {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let window = members.get(client_id)?.window.upgrade()?;
        let mut held = window.held_partitions();
        held.sort();
        Some(held)
    }
}

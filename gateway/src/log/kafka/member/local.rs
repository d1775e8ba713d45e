//! This gateway's own subscribers by Kafka client id, so describe-group can show their partitions when
//! the broker's DescribeGroups answer carries no member assignments (tansu 0.6.0 sends none; Apache
//! Kafka does, and then its answer is used).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak},
};

use super::MemberState;
use crate::log::TopicPartition;

#[derive(Debug, Default)]
pub(in crate::log::kafka) struct LocalMembers {
    members: Mutex<HashMap<String, Weak<MemberState>>>,
}

impl LocalMembers {
    pub(super) fn register(&self, client_id: &str, state: &Arc<MemberState>) {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        members.retain(|_, member| member.strong_count() > 0);
        members.insert(client_id.to_owned(), Arc::downgrade(state));
    }

    /// The protocol of a live local subscriber of `group` other than `protocol`, if any. Covers
    /// subscribers that have not finished joining, which the broker does not list yet.
    pub(in crate::log::kafka) fn other_protocol(
        &self,
        group: &str,
        protocol: &str,
    ) -> Option<&'static str> {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        members
            .values()
            .filter_map(Weak::upgrade)
            .filter(|state| state.group.as_deref() == Some(group) && !state.events.is_closed())
            .map(|state| state.protocol)
            .find(|other| *other != protocol)
    }

    /// Partitions a local subscriber holds; `None` if the client id is not one of ours.
    pub(in crate::log::kafka) fn assigned(&self, client_id: &str) -> Option<Vec<TopicPartition>> {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let state = members.get(client_id)?.upgrade()?;
        let mut held = state.window.held_partitions();
        held.sort();
        Some(held)
    }
}

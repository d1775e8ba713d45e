//! Whose sessions are kept: how many persistent sessions each principal has, kept from the session
//! table as it changes, so every replica holds a principal to the same cap
//! (`mqtt.max_sessions_per_principal`), whichever replica its clients connect through.
//!
//! A session counts while it can be resumed: its connection is live (or its replica went away
//! without recording its end), or it left and its expiry has not run out (or it has none). Expiry
//! needs no record to pass: a session's deadline is known when its client leaves, and a count
//! drops the deadlines that have passed. Anonymous clients' sessions are not counted (each client
//! id is its own account).
//!
//! When the table reads its topic again from the start (after a move to another region's
//! copies), the first record of the new read clears the counts, and the read rebuilds them.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
};

use courier_gateway::{auth::ANONYMOUS, readers::table::Version};

use super::SessionRecord;

/// The principals' resumable sessions.
#[derive(Debug, Default)]
pub struct SessionOwners {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The table's read the counts are of.
    read: u64,
    /// Each counted session's owner, and when it stops counting (`None`: not before it changes).
    by_client: HashMap<String, (Arc<str>, Option<i64>)>,
    by_owner: HashMap<Arc<str>, Counted>,
}

/// One owner's sessions.
#[derive(Debug, Default)]
struct Counted {
    /// Sessions without a deadline: connected, or kept forever.
    open: u64,
    /// Sessions whose client left, by the time they expire.
    expiring: BTreeMap<i64, u64>,
    /// The sum of `expiring`'s counts.
    expiring_total: u64,
}

impl Counted {
    fn is_empty(&self) -> bool {
        self.open == 0 && self.expiring_total == 0
    }

    /// Forgets the sessions expired by `now_ms`.
    fn expire(&mut self, now_ms: i64) {
        let alive = self.expiring.split_off(&(now_ms + 1));
        let expired = std::mem::replace(&mut self.expiring, alive);
        self.expiring_total -= expired.values().sum::<u64>();
    }
}

impl SessionOwners {
    /// Applies a change of the session table: `client_id`'s newest record, `None` once deleted
    /// (or unreadable), read as `version`.
    pub fn on_change(
        &self,
        client_id: &str,
        session: Option<&SessionRecord>,
        version: &Version,
        now_ms: i64,
    ) {
        let counted = session.and_then(|session| {
            let owner = session
                .owner
                .as_deref()
                .filter(|owner| *owner != ANONYMOUS)?;
            let deadline = deadline(session)?;
            deadline
                .is_none_or(|deadline| deadline > now_ms)
                .then_some((owner, deadline))
        });
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((read, ..)) = version.place
            && read > state.read
        {
            *state = State {
                read,
                ..State::default()
            };
        }
        state.release(client_id);
        if let Some((owner, deadline)) = counted {
            state.hold(client_id, owner, deadline);
        }
    }

    /// How many resumable sessions `owner` has at `now_ms`.
    pub fn count(&self, owner: &str, now_ms: i64) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(counted) = state.by_owner.get_mut(owner) else {
            return 0;
        };
        counted.expire(now_ms);
        counted.open + counted.expiring_total
    }

    /// Whether `client_id`'s session is counted for `owner` at `now_ms`: connecting to it again
    /// adds no session.
    pub fn counts_for(&self, owner: &str, client_id: &str, now_ms: i64) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .by_client
            .get(client_id)
            .is_some_and(|(held_by, deadline)| {
                &**held_by == owner && deadline.is_none_or(|deadline| deadline > now_ms)
            })
    }
}

/// When a session stops counting: `None` for one that counts until it changes, and no answer for
/// one that does not count at all (it ends with its connection).
fn deadline(session: &SessionRecord) -> Option<Option<i64>> {
    if !session.outlives_connection() {
        return None;
    }
    Some(match (session.disconnected_at_ms, session.expiry_secs) {
        (Some(left), Some(expiry)) => Some(left.saturating_add(i64::from(expiry) * 1000)),
        _ => None,
    })
}

impl State {
    fn release(&mut self, client_id: &str) {
        let Some((owner, deadline)) = self.by_client.remove(client_id) else {
            return;
        };
        let Some(counted) = self.by_owner.get_mut(&owner) else {
            return;
        };
        match deadline {
            None => counted.open = counted.open.saturating_sub(1),
            // Gone already when a count expired it.
            Some(deadline) => {
                if let Some(count) = counted.expiring.get_mut(&deadline) {
                    *count -= 1;
                    counted.expiring_total -= 1;
                    if *count == 0 {
                        counted.expiring.remove(&deadline);
                    }
                }
            }
        }
        if counted.is_empty() {
            self.by_owner.remove(&owner);
        }
    }

    fn hold(&mut self, client_id: &str, owner: &str, deadline: Option<i64>) {
        let owner: Arc<str> = match self.by_owner.get_key_value(owner) {
            Some((known, _)) => known.clone(),
            None => Arc::from(owner),
        };
        let counted = self.by_owner.entry(owner.clone()).or_default();
        match deadline {
            None => counted.open += 1,
            Some(deadline) => {
                *counted.expiring.entry(deadline).or_default() += 1;
                counted.expiring_total += 1;
            }
        }
        self.by_client
            .insert(client_id.to_owned(), (owner, deadline));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(n: u64) -> Version {
        Version {
            timestamp_ms: 0,
            courier_id: String::new(),
            place: Some((n, Arc::from("mqtt.sessions"), 0, 0)),
        }
    }

    impl SessionOwners {
        /// A change of the table's first read.
        fn on_change_at(&self, client_id: &str, session: Option<&SessionRecord>, now_ms: i64) {
            self.on_change(client_id, session, &read(1), now_ms);
        }
    }

    fn session(owner: &str, expiry_secs: Option<u32>, left_at: Option<i64>) -> SessionRecord {
        SessionRecord {
            connection: "c".into(),
            owner: Some(owner.into()),
            session: "s".into(),
            persistent: true,
            expiry_secs,
            disconnected_at_ms: left_at,
            subscriptions: Vec::new(),
            awaiting_release: Vec::new(),
        }
    }

    #[test]
    fn sessions_count_while_resumable_and_move_with_their_records() {
        let owners = SessionOwners::default();
        // Connected; kept forever after leaving; left at 1 s with 10 s to live.
        owners.on_change_at("a", Some(&session("alice", Some(60), None)), 0);
        owners.on_change_at("b", Some(&session("alice", None, Some(0))), 0);
        owners.on_change_at("c", Some(&session("alice", Some(10), Some(1_000))), 0);
        // Not counted: ends with its connection, has no owner, or expired when read.
        owners.on_change_at("d", Some(&session("alice", Some(0), None)), 0);
        let mut unowned = session("alice", None, None);
        unowned.owner = None;
        owners.on_change_at("e", Some(&unowned), 0);
        owners.on_change_at("f", Some(&session("alice", Some(1), Some(0))), 5_000);
        assert_eq!(owners.count("alice", 0), 3);
        assert!(owners.counts_for("alice", "c", 0));
        assert!(!owners.counts_for("bob", "c", 0));

        // Time passes: "c" expires without a record.
        assert_eq!(owners.count("alice", 11_000), 2);
        assert!(!owners.counts_for("alice", "c", 11_000));
        // Its record changing later releases nothing twice.
        owners.on_change_at("c", Some(&session("bob", None, None)), 12_000);
        assert_eq!(owners.count("alice", 12_000), 2);
        assert_eq!(owners.count("bob", 12_000), 1);

        // Reconnecting and leaving again moves a session between open and expiring.
        owners.on_change_at("a", Some(&session("alice", Some(60), Some(12_000))), 12_000);
        assert_eq!(owners.count("alice", 71_999), 2);
        assert_eq!(owners.count("alice", 72_000), 1);
        for client in ["a", "b", "c", "d", "e", "f"] {
            owners.on_change_at(client, None, 80_000);
        }
        assert_eq!(owners.count("alice", 80_000), 0);
        let state = owners.state.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(state.by_client.is_empty() && state.by_owner.is_empty());
    }

    /// A new read of the table starts the counts over; anonymous sessions never count.
    #[test]
    fn a_new_read_starts_over_and_anonymous_sessions_are_not_counted() {
        let owners = SessionOwners::default();
        owners.on_change("a", Some(&session("alice", None, None)), &read(1), 0);
        owners.on_change("b", Some(&session("alice", None, None)), &read(1), 0);
        owners.on_change("a", Some(&session("alice", None, None)), &read(2), 0);
        assert_eq!(owners.count("alice", 0), 1);
        owners.on_change("x", Some(&session(ANONYMOUS, None, None)), &read(2), 0);
        assert_eq!(owners.count(ANONYMOUS, 0), 0);
    }
}

//! One CONNECT handshake at a time per client id on this replica.
//!
//! A handshake reads the client id's session record, checks whose it is, and writes its own: two
//! of them interleaved (two principals connecting under one id at once) would both pass the owner
//! check before either record is written. Each handshake takes its client id's turn from before
//! the read until after the write, so the second reads what the first wrote.
//!
//! A client id's entry lives only while a handshake holds or awaits its turn: the last one to
//! leave (done, or given up while waiting) removes it, so the map holds no more entries than
//! handshakes under way.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{Mutex as TurnLock, OwnedMutexGuard};

use crate::sync::lock;

/// Each client id's lock, and how many handshakes hold or await it.
type Turns = Arc<Mutex<HashMap<String, (Arc<TurnLock<()>>, usize)>>>;

/// The client ids whose handshakes are under way here.
#[derive(Debug, Default)]
pub(super) struct Handshakes {
    turns: Turns,
}

/// A handshake's turn for its client id, until dropped.
#[derive(Debug)]
pub struct HandshakeTurn {
    // Declared first, so dropped first: the turn is released before the entry is looked at.
    _turn: OwnedMutexGuard<()>,
    _entry: Entry,
}

/// A claim on a client id's entry, held while waiting for the turn and during it.
#[derive(Debug)]
struct Entry {
    turns: Turns,
    client_id: String,
}

impl Handshakes {
    /// Waits for `client_id`'s turn. Dropping the future while it waits gives the place up.
    pub(super) async fn turn(&self, client_id: &str) -> HandshakeTurn {
        let turn_lock = {
            let mut turns = lock(&self.turns);
            let (turn_lock, claims) = turns.entry(client_id.to_owned()).or_default();
            *claims += 1;
            turn_lock.clone()
        };
        let entry = Entry {
            turns: self.turns.clone(),
            client_id: client_id.to_owned(),
        };
        HandshakeTurn {
            _turn: turn_lock.lock_owned().await,
            _entry: entry,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.turns).len()
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Claims are counted under the map's lock: at zero no handshake holds or awaits the turn
        // (a holder releases it before its claim goes), and a new one makes a new entry.
        let mut turns = lock(&self.turns);
        if let Some((_, claims)) = turns.get_mut(&self.client_id) {
            *claims = claims.saturating_sub(1);
            if *claims == 0 {
                turns.remove(&self.client_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn handshakes_of_one_client_id_take_turns() {
        let handshakes = Handshakes::default();
        let first = handshakes.turn("c").await;
        let other_id = handshakes.turn("d").now_or_never();
        assert!(other_id.is_some(), "other client ids do not wait");
        let mut second = Box::pin(handshakes.turn("c"));
        assert!((&mut second).now_or_never().is_none(), "the second waits");
        drop(first);
        let second = second
            .now_or_never()
            .expect("its turn once the first is done");
        drop(other_id);
        assert_eq!(handshakes.len(), 1);
        drop(second);
        assert_eq!(handshakes.len(), 0, "no entry outlives its handshakes");
    }

    #[tokio::test]
    async fn a_handshake_that_gives_up_waiting_leaves_nothing_behind() {
        let handshakes = Handshakes::default();
        let first = handshakes.turn("c").await;
        let mut waiting = Box::pin(handshakes.turn("c"));
        assert!((&mut waiting).now_or_never().is_none());
        drop(first);
        drop(waiting);
        assert_eq!(handshakes.len(), 0);
    }
}

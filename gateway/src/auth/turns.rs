//! One password check at a time per source address (an IPv6 client by its /64).
//!
//! The [`Throttle`](super::Throttle) spaces an address's attempts by its recorded failures, but
//! attempts that arrive together, before any of them has failed, would all find it clean: a flood
//! that opens with two dozen guesses at once got two dozen argon2 checks (tens of milliseconds of
//! a core each) before the first failure was known. Here the attempts of one address take turns:
//! each goes to the throttle only when the one before it has its outcome, so the second guess of
//! a burst already waits out the first one's failure, and a burst costs what a sequence does.
//! Clients of other addresses never wait here. One address's checks use at most one of the
//! hashing pool's threads, so many clients behind one NAT log in one after another (about 40 a
//! second at argon2's usual cost); passwords verified moments ago skip this from a clean address
//! (see [`passwords`](super::passwords)).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::throttle::Throttled;
use crate::limits::host;

/// Attempts of one address waiting for their turn; one more is refused at once.
const MAX_WAITING: usize = 256;

/// The longest an attempt waits for its turn before it is refused.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// Whose turn it is, per address that has an attempt being checked or waiting.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    lines: Mutex<HashMap<IpAddr, Line>>,
}

/// One address's attempts in progress.
#[derive(Debug)]
struct Line {
    turn: Arc<Semaphore>,
    /// Attempts holding the turn or waiting for it; counted under the map's lock only.
    places: usize,
}

/// An address's turn: its next attempt waits until this is dropped.
#[derive(Debug)]
pub(crate) struct Turn {
    _permit: OwnedSemaphorePermit,
    _place: Place,
}

/// A place in an address's line (waiting, or holding the turn): the last one out removes the
/// line, so the map holds only addresses with an attempt in progress.
#[derive(Debug)]
struct Place {
    turns: Arc<Turns>,
    address: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut lines = self
            .turns
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(line) = lines.get_mut(&self.address) {
            line.places = line.places.saturating_sub(1);
            if line.places == 0 {
                lines.remove(&self.address);
            }
        }
    }
}

impl Turns {
    /// Waits for `address`'s turn, or refuses the attempt: at once when too many of the
    /// address's wait already, or when those ahead of it, `each` apart (the throttle's wait
    /// for the address), would hold it past [`MAX_WAIT`]; else once it has waited that long.
    pub(crate) async fn take(
        self: &Arc<Self>,
        address: IpAddr,
        each: Duration,
    ) -> Result<Turn, Throttled> {
        let address = host(address);
        let (place, turn) = {
            let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
            let line = lines.entry(address).or_insert_with(|| Line {
                turn: Arc::new(Semaphore::new(1)),
                places: 0,
            });
            // One place is the turn's holder's, the others wait.
            let ahead = u32::try_from(line.places).unwrap_or(u32::MAX);
            if line.places > MAX_WAITING || each.saturating_mul(ahead) > MAX_WAIT {
                return Err(Throttled);
            }
            line.places += 1;
            let place = Place {
                turns: self.clone(),
                address,
            };
            (place, line.turn.clone())
        };
        match tokio::time::timeout(MAX_WAIT, turn.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Turn {
                _permit: permit,
                _place: place,
            }),
            // Timed out (the semaphore is never closed).
            _ => Err(Throttled),
        }
    }

    /// Whether `address` has no attempt being checked or waiting.
    pub(crate) fn idle(&self, address: IpAddr) -> bool {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        !lines.contains_key(&host(address))
    }

    #[cfg(test)]
    fn places(&self, address: IpAddr) -> usize {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines.get(&address).map_or(0, |line| line.places)
    }

    #[cfg(test)]
    fn lines(&self) -> usize {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const THERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[tokio::test(start_paused = true)]
    async fn an_address_waits_for_its_own_turn_only() {
        let turns = Arc::new(Turns::default());
        let first = turns.take(HERE, Duration::ZERO).await.unwrap();
        // Another address goes at once.
        let there = turns.take(THERE, Duration::ZERO).await.unwrap();
        let next = tokio::spawn({
            let turns = turns.clone();
            async move {
                turns
                    .take(HERE, Duration::ZERO)
                    .await
                    .map(|_| tokio::time::Instant::now())
            }
        });
        tokio::time::advance(Duration::from_millis(300)).await;
        let released = tokio::time::Instant::now();
        drop(first);
        assert_eq!(
            next.await.unwrap(),
            Ok(released),
            "the next one goes when the first ends"
        );
        drop(there);
        assert_eq!(
            turns.lines(),
            0,
            "nothing kept for addresses with nothing in progress"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_line_or_a_long_wait_is_refused() {
        let turns = Arc::new(Turns::default());
        let _holding = turns.take(HERE, Duration::ZERO).await.unwrap();
        let mut waiting = tokio::task::JoinSet::new();
        for _ in 0..MAX_WAITING {
            let turns = turns.clone();
            waiting.spawn(async move { turns.take(HERE, Duration::ZERO).await.map(drop) });
        }
        while turns.places(HERE) <= MAX_WAITING {
            tokio::task::yield_now().await;
        }
        // Every waiting place is taken: one more is refused at once.
        let one_more = turns
            .take(HERE, Duration::ZERO)
            .now_or_never()
            .map(|outcome| outcome.map(drop));
        assert_eq!(one_more, Some(Err(Throttled)));
        // None of the waiting ones was refused at once.
        assert_eq!(waiting.len(), MAX_WAITING);
        assert!(waiting.try_join_next().is_none());
        // The waiting ones are refused when their wait runs out.
        let outcomes = waiting.join_all().await;
        assert!(outcomes.iter().all(|outcome| *outcome == Err(Throttled)));
        assert_eq!(turns.lines(), 1, "the holder's line stays");
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_would_wait_too_long_behind_the_others_is_refused_at_once() {
        let turns = Arc::new(Turns::default());
        let each = Duration::from_secs(6);
        let _holding = turns.take(HERE, each).await.unwrap();
        let second = tokio::spawn({
            let turns = turns.clone();
            async move { turns.take(HERE, each).await.map(drop) }
        });
        while turns.places(HERE) < 2 {
            tokio::task::yield_now().await;
        }
        // Two ahead, 6 s apart: past the 10 s bound, refused at once. A clean address's are not.
        let third = turns
            .take(HERE, each)
            .now_or_never()
            .map(|outcome| outcome.map(drop));
        assert_eq!(third, Some(Err(Throttled)));
        let clean = turns.take(HERE, Duration::ZERO).now_or_never();
        assert!(clean.is_none(), "a clean address's attempt waits its turn");
        second.abort();
    }
}

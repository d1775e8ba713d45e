//! The takeover fence: live connections by client id, one per client id across replicas.
//!
//! Every connect writes a session record before CONNACK, versioned past the record it read (see
//! [`courier_gateway::readers::table`]), so versions order the connections, in whichever region's
//! copy of `mqtt.sessions` the records are read. A connection is taken over when a newer record
//! names another connection, whether that connection is on this replica
//! ([`TakeoverFence::register`]) or on another one (the session table calls [`TakeoverFence::on_record`]).
//!
//! The fence also tells its connections the other reasons they must end (`state`): the gateway
//! shuts down ([`TakeoverFence::shut_down`]), a client fell silent past its keep-alive or its
//! credentials expired ([`TakeoverFence::sweep`], every [`SWEEP_EVERY`]). An idle connection waits
//! for one signal, not for a takeover, a cancellation token and a timer apart.
//!
//! Before its record is written, a connect checks that the client id is not another principal's.
//! Handshakes of one client id take turns on this replica ([`TakeoverFence::handshake`], in
//! `handshakes`), so two principals connecting at once cannot both pass that check here.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use courier_gateway::readers::table::Version;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sync::lock;

mod handshakes;
mod state;

pub use self::handshakes::HandshakeTurn;
pub use self::state::{ConnectionState, Ending};

/// How often the fence looks for clients silent past their keep-alive and credentials that
/// expired: a connection ends at most this long after its deadline. MQTT asks that a connection
/// silent for one and a half keep-alives be closed, not how promptly; Mosquitto looks as seldom.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The live connections are kept in this many tables, by client id: a sweep or a shutdown holds
/// one table's lock at a time, so with a million connections a connect waits for a sixty-fourth
/// of a scan at most, not for all of it.
const SHARDS: usize = 64;

/// Live connections by client id.
type LiveTable = HashMap<Box<str>, Live>;

/// The live connections of this replica.
///
/// Its names are boxed strings, not `String`s: every connected client has an entry, so each
/// name's spare capacity field would be memory per client.
#[derive(Debug)]
pub struct TakeoverFence {
    /// In [`SHARDS`] tables, by the client id's hash.
    live: Box<[Mutex<LiveTable>]>,
    shard_of: RandomState,
    /// QoS 2 packet ids awaiting release, kept between connections of a persistent session here.
    parked: Mutex<HashMap<String, Parked>>,
    /// The CONNECT handshakes under way here, one at a time per client id.
    handshakes: handshakes::Handshakes,
    /// The gateway shuts down: set before any table is visited, and read by a registration
    /// under its table's lock, so a connection registered as it is set is told as well.
    shutting_down: AtomicBool,
    /// Where the connections' deadlines are counted from (the runtime's clock, which tests pause).
    epoch: Instant,
}

impl Default for TakeoverFence {
    fn default() -> Self {
        Self {
            live: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_of: RandomState::new(),
            parked: Mutex::default(),
            handshakes: handshakes::Handshakes::default(),
            shutting_down: AtomicBool::default(),
            epoch: Instant::now(),
        }
    }
}

#[derive(Debug)]
struct Live {
    version: Version,
    state: ConnectionState,
}

#[derive(Debug)]
struct Parked {
    session: String,
    awaiting_release: Vec<u16>,
}

/// A connection's place behind the fence; leaving it (drop) tells a waiting successor it is done.
#[derive(Debug)]
pub struct Registration {
    fence: Arc<TakeoverFence>,
    /// Why it must end (a takeover, silence, expiry, a shutdown), and whether it has finished.
    pub state: ConnectionState,
}

impl TakeoverFence {
    /// Registers a connection whose session record was written as `version`. Returns its registration and,
    /// when it takes over an older connection here, that one's state, to wait until it has finished.
    pub fn register(
        self: &Arc<Self>,
        client_id: &str,
        connection: &str,
        version: Version,
    ) -> (Registration, Option<ConnectionState>) {
        let registration = Registration {
            fence: self.clone(),
            state: ConnectionState::new(client_id, connection),
        };
        let mut live = self.live_of(client_id);
        if self.shutting_down.load(Ordering::Acquire) {
            registration.state.shut_down();
        }
        let mut predecessor = None;
        match live.get(client_id) {
            Some(newer) if newer.version.is_newer_than(&version) => {
                // A newer connection registered first: this one lost the race already.
                registration.state.take_over();
                return (registration, None);
            }
            Some(older) => {
                older.state.take_over();
                predecessor = Some(older.state.clone());
            }
            None => {}
        }
        live.insert(
            client_id.into(),
            Live {
                version,
                state: registration.state.clone(),
            },
        );
        (registration, predecessor)
    }

    /// Waits for `client_id`'s turn to connect: from reading its session record until this
    /// connection's record is written and registered, no other handshake of the client id runs
    /// here. The turn ends when the returned value is dropped.
    pub async fn handshake(&self, client_id: &str) -> HandshakeTurn {
        self.handshakes.turn(client_id).await
    }

    /// A session record was read: takes the client id from a local connection the record
    /// supersedes. A connection's own record, read back, gives it the place it was read at, so it
    /// is compared by the log's order with records read after it.
    pub fn on_record(&self, client_id: &str, connection: &str, version: &Version) {
        let mut live = self.live_of(client_id);
        let Some(live) = live.get_mut(client_id) else {
            return;
        };
        if live.state.connection() == connection {
            live.version = version.clone();
        } else if version.is_newer_than(&live.version) {
            live.state.take_over();
        }
    }

    /// The gateway shuts down: every live connection is told, and every one registered from now on.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        for live in &self.live {
            for connection in lock(live).values() {
                connection.state.shut_down();
            }
        }
    }

    /// Signals the live connections whose client was silent past its keep-alive, or whose
    /// credentials expired.
    pub fn sweep(&self) {
        for live in &self.live {
            let now = self.now_ms();
            for connection in lock(live).values() {
                connection.state.check_deadlines(now);
            }
        }
    }

    /// Sweeps every [`SWEEP_EVERY`] until `cancel` fires or the fence is dropped.
    pub fn keep_sweeping(self: &Arc<Self>, cancel: CancellationToken) {
        let fence = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = every.tick() => {}
                }
                let Some(fence) = Weak::upgrade(&fence) else {
                    return;
                };
                fence.sweep();
            }
        });
    }

    /// Milliseconds of the fence's clock.
    fn now_ms(&self) -> u64 {
        state::millis(self.epoch.elapsed())
    }

    /// The table `client_id`'s connection is in, locked.
    fn live_of(&self, client_id: &str) -> MutexGuard<'_, LiveTable> {
        let hash = self.shard_of.hash_one(client_id);
        // The remainder is below SHARDS, so it fits.
        let shard = usize::try_from(hash % SHARDS as u64).unwrap_or_default();
        lock(&self.live[shard])
    }

    /// Is a connection with this client id live here?
    pub fn is_connected(&self, client_id: &str) -> bool {
        self.live_of(client_id).contains_key(client_id)
    }

    /// Keeps a persistent session's QoS 2 state for the client's next connection to this replica.
    pub fn park(&self, client_id: &str, session: &str, awaiting_release: Vec<u16>) {
        lock(&self.parked).insert(
            client_id.to_owned(),
            Parked {
                session: session.to_owned(),
                awaiting_release,
            },
        );
    }

    /// Takes the parked QoS 2 state of a resumed session, if it was parked here.
    pub fn take_parked(&self, client_id: &str, session: &str) -> Option<Vec<u16>> {
        let mut parked = lock(&self.parked);
        match parked.remove(client_id) {
            Some(state) if state.session == session => Some(state.awaiting_release),
            _ => None,
        }
    }
}

impl Registration {
    /// From now on, the client may be silent for `silence` at most, and its credentials expire
    /// after `expires_in` (`None`: no such limit); the fence's sweep ends it past either.
    pub fn watch(&self, silence: Option<Duration>, expires_in: Option<Duration>) {
        self.state.watch(self.fence.now_ms(), silence, expires_in);
    }

    /// The client was heard from: its keep-alive starts again.
    pub fn heard(&self) {
        self.state.heard(self.fence.now_ms());
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self.fence.live_of(self.state.client_id());
        if live
            .get(self.state.client_id())
            .is_some_and(|entry| entry.state.connection() == self.state.connection())
        {
            live.remove(self.state.client_id());
        }
        self.state.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version of the record at `offset` of the sessions topic's partition 0.
    fn at(offset: i64) -> Version {
        Version {
            timestamp_ms: offset,
            courier_id: format!("id-{offset}"),
            place: Some((0, "mqtt.sessions".into(), 0, offset)),
        }
    }

    #[test]
    fn the_newest_record_wins_here_and_from_other_replicas() {
        use futures_util::FutureExt as _;

        let fence = Arc::new(TakeoverFence::default());
        let (first, predecessor) = fence.register("c", "conn-1", at(10));
        assert!(predecessor.is_none());
        let (second, predecessor) = fence.register("c", "conn-2", at(11));
        assert_eq!(first.state.ended_by(), Some(Ending::TakenOver));
        let predecessor = predecessor.unwrap();
        assert!(predecessor.finished().now_or_never().is_none());
        drop(first);
        assert!(predecessor.finished().now_or_never().is_some());
        assert!(fence.is_connected("c"), "the newer one stays");

        fence.on_record("c", "conn-2", &at(11));
        fence.on_record("c", "elsewhere", &at(5));
        assert_eq!(
            second.state.ended_by(),
            None,
            "older records change nothing"
        );
        fence.on_record("c", "elsewhere", &at(12));
        assert_eq!(second.state.ended_by(), Some(Ending::TakenOver));

        let (late, _) = fence.register("c", "conn-0", at(3));
        assert_eq!(
            late.state.ended_by(),
            Some(Ending::TakenOver),
            "a stale connect loses at once"
        );
    }

    /// The sweep ends a connection silent for its keep-alive's one and a half (counted from the
    /// last time it was heard) and one whose credentials expired, each for its own reason, and no
    /// other; the fence's sweeper task does it on its own.
    #[tokio::test(start_paused = true)]
    async fn the_sweep_ends_silent_and_expired_connections() {
        use futures_util::FutureExt as _;
        use tokio::time::advance;

        let second = std::time::Duration::from_secs(1);
        let fence = Arc::new(TakeoverFence::default());
        let (talking, _) = fence.register("talking", "conn-1", at(1));
        talking.watch(Some(second * 3 / 2), None);
        let (expiring, _) = fence.register("expiring", "conn-2", at(2));
        expiring.watch(None, Some(second * 5 / 2));
        let (unlimited, _) = fence.register("unlimited", "conn-3", at(3));
        unlimited.watch(None, None);

        for _ in 0..2 {
            advance(second).await;
            talking.heard();
            fence.sweep();
            assert_eq!(talking.state.ended_by(), None);
        }
        assert_eq!(expiring.state.ended_by(), None);
        advance(second).await;
        fence.sweep();
        assert_eq!(talking.state.ended_by(), None, "heard a second ago");
        assert_eq!(expiring.state.ended_by(), Some(Ending::Expired));
        advance(second).await;
        fence.sweep();
        assert_eq!(talking.state.ended_by(), Some(Ending::Silent));
        assert!(talking.state.ending().now_or_never().is_some());
        // Its packets waited while the connection was busy: read now, they take the silence back.
        talking.heard();
        assert_eq!(talking.state.ended_by(), None);

        let cancel = CancellationToken::new();
        fence.keep_sweeping(cancel.clone());
        advance(Duration::from_secs(3600)).await;
        assert_eq!(unlimited.state.ended_by(), None);
        let (late, _) = fence.register("late", "conn-4", at(4));
        late.watch(Some(second), None);
        tokio::time::timeout(SWEEP_EVERY * 3, late.state.ending())
            .await
            .expect("the sweeper ends a silent connection");
        assert_eq!(late.state.ended_by(), Some(Ending::Silent));
        cancel.cancel();
        // A shutdown is the reason over silence or expiry.
        fence.shut_down();
        assert_eq!(expiring.state.ended_by(), Some(Ending::ShuttingDown));
        assert_eq!(late.state.ended_by(), Some(Ending::ShuttingDown));
    }

    /// A shutdown tells every live connection, and every one registered after it, through the
    /// same wait as a takeover; it is not a takeover.
    #[tokio::test]
    async fn a_shutdown_reaches_live_and_later_connections() {
        use futures_util::FutureExt as _;

        let fence = Arc::new(TakeoverFence::default());
        let (live, _) = fence.register("a", "conn-1", at(10));
        let state = live.state.clone();
        let waiting = tokio::spawn(async move { state.ending().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());

        fence.shut_down();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the wait ends at the shutdown")
            .expect("the waiting task");
        assert_eq!(
            live.state.ended_by(),
            Some(Ending::ShuttingDown),
            "not a takeover"
        );

        let (later, _) = fence.register("b", "conn-2", at(11));
        assert!(later.state.ending().now_or_never().is_some());
        assert_eq!(later.state.ended_by(), Some(Ending::ShuttingDown));
    }

    /// The waits end when their signal comes, whether it came before or while they wait.
    #[tokio::test]
    async fn waiting_for_a_takeover_and_a_finish() {
        use futures_util::FutureExt as _;

        let fence = Arc::new(TakeoverFence::default());
        let (first, _) = fence.register("c", "conn-1", at(10));
        let state = first.state.clone();
        let waiting = tokio::spawn(async move { state.ending().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(first.state.ending().now_or_never().is_none());

        let (_second, predecessor) = fence.register("c", "conn-2", at(11));
        let Some(predecessor) = predecessor else {
            panic!("the second connection takes over the first");
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the wait for the takeover ends")
            .expect("the waiting task");
        assert_eq!(first.state.ended_by(), Some(Ending::TakenOver));

        let finishing = tokio::spawn({
            let predecessor = predecessor.clone();
            async move { predecessor.finished().await }
        });
        tokio::task::yield_now().await;
        assert!(!finishing.is_finished());
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), finishing)
            .await
            .expect("the wait for the finish ends")
            .expect("the waiting task");
        assert!(predecessor.finished().now_or_never().is_some());
    }
}

//! The takeover fence: live connections by client id, one per client id across replicas.
//!
//! Every connect writes a session record before CONNACK, versioned past the record it read (see
//! [`courier_gateway::readers::table`]), so versions order the connections, in whichever region's
//! copy of `mqtt.sessions` the records are read. A connection is taken over when a newer record
//! names another connection, whether that connection is on this replica
//! ([`TakeoverFence::register`]) or on another one (the session table calls [`TakeoverFence::on_record`]).
//!
//! The fence also tells its connections that the gateway shuts down ([`TakeoverFence::shut_down`]):
//! an idle connection waits for one signal, not for a takeover and a cancellation token apart.
//!
//! Before its record is written, a connect checks that the client id is not another principal's.
//! Handshakes of one client id take turns on this replica ([`TakeoverFence::handshake`], in
//! `handshakes`), so two principals connecting at once cannot both pass that check here.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
};

use courier_gateway::readers::table::Version;
use tokio::sync::Notify;

use crate::sync::lock;

mod handshakes;

pub use self::handshakes::HandshakeTurn;

/// The live connections of this replica.
///
/// Its names are boxed strings, not `String`s: every connected client has an entry and a
/// registration, so each name's spare capacity field is memory per client.
#[derive(Debug, Default)]
pub struct TakeoverFence {
    live: Mutex<HashMap<Box<str>, Live>>,
    /// QoS 2 packet ids awaiting release, kept between connections of a persistent session here.
    parked: Mutex<HashMap<String, Parked>>,
    /// The CONNECT handshakes under way here, one at a time per client id.
    handshakes: handshakes::Handshakes,
    /// The gateway shuts down: set, and read by registrations, under `live`'s lock, so a
    /// connection registered as it is set is told as well.
    shutting_down: AtomicBool,
}

#[derive(Debug)]
struct Live {
    connection: Box<str>,
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
    client_id: Box<str>,
    connection: Box<str>,
    /// Whether a newer connection took the client id; whether this one has finished.
    pub state: ConnectionState,
}

/// What the fence tells about one connection: a newer connection took its client id, or the
/// gateway shuts down; and it has finished. All in one allocation (cancellation tokens were one
/// each), which every connection holds for as long as it lasts.
#[derive(Debug, Clone, Default)]
pub struct ConnectionState(Arc<Signals>);

#[derive(Debug, Default)]
struct Signals {
    /// The signals set, as [`TAKEN_OVER`], [`SHUTTING_DOWN`] and [`FINISHED`] bits.
    signals: AtomicU8,
    changed: Notify,
}

const TAKEN_OVER: u8 = 1;
const FINISHED: u8 = 2;
const SHUTTING_DOWN: u8 = 4;

impl ConnectionState {
    /// A newer connection took the client id.
    pub fn take_over(&self) {
        self.0.set(TAKEN_OVER);
    }

    pub fn is_taken_over(&self) -> bool {
        self.0.is_set(TAKEN_OVER)
    }

    /// Once a newer connection took the client id. Cancel-safe.
    pub fn taken_over(&self) -> impl Future<Output = ()> + '_ {
        self.0.until(TAKEN_OVER)
    }

    /// Once a newer connection took the client id or the gateway shuts down, whichever comes
    /// first ([`Self::is_taken_over`] tells which). Cancel-safe.
    pub fn taken_over_or_shutting_down(&self) -> impl Future<Output = ()> + '_ {
        self.0.until(TAKEN_OVER | SHUTTING_DOWN)
    }

    fn finish(&self) {
        self.0.set(FINISHED);
    }

    pub fn is_finished(&self) -> bool {
        self.0.is_set(FINISHED)
    }

    /// Once the connection has finished. Cancel-safe.
    pub fn finished(&self) -> impl Future<Output = ()> + '_ {
        self.0.until(FINISHED)
    }
}

impl Signals {
    fn set(&self, signal: u8) {
        self.signals.fetch_or(signal, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    fn is_set(&self, signal: u8) -> bool {
        self.signals.load(Ordering::Acquire) & signal != 0
    }

    /// Once one of the `signals` bits is set. Called without another `async fn` around it: the
    /// wait for a takeover is in every idle connection's task, and each layer would add to it.
    async fn until(&self, signals: u8) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Listening before looking, so a signal between the two is not missed.
            changed.as_mut().enable();
            if self.is_set(signals) {
                return;
            }
            changed.await;
        }
    }
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
            client_id: client_id.into(),
            connection: connection.into(),
            state: ConnectionState::default(),
        };
        let mut live = lock(&self.live);
        if self.shutting_down.load(Ordering::Acquire) {
            registration.state.0.set(SHUTTING_DOWN);
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
                connection: connection.into(),
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
        let mut live = lock(&self.live);
        let Some(live) = live.get_mut(client_id) else {
            return;
        };
        if *live.connection == *connection {
            live.version = version.clone();
        } else if version.is_newer_than(&live.version) {
            live.state.take_over();
        }
    }

    /// The gateway shuts down: every live connection is told, and every one registered from now on.
    pub fn shut_down(&self) {
        let live = lock(&self.live);
        self.shutting_down.store(true, Ordering::Release);
        for connection in live.values() {
            connection.state.0.set(SHUTTING_DOWN);
        }
    }

    /// Is a connection with this client id live here?
    pub fn is_connected(&self, client_id: &str) -> bool {
        lock(&self.live).contains_key(client_id)
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

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = lock(&self.fence.live);
        if live
            .get(&self.client_id)
            .is_some_and(|entry| *entry.connection == *self.connection)
        {
            live.remove(&self.client_id);
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
        let fence = Arc::new(TakeoverFence::default());
        let (first, predecessor) = fence.register("c", "conn-1", at(10));
        assert!(predecessor.is_none());
        let (second, predecessor) = fence.register("c", "conn-2", at(11));
        assert!(first.state.is_taken_over());
        let predecessor = predecessor.unwrap();
        assert!(!predecessor.is_finished());
        drop(first);
        assert!(predecessor.is_finished());
        assert!(fence.is_connected("c"), "the newer one stays");

        fence.on_record("c", "conn-2", &at(11));
        fence.on_record("c", "elsewhere", &at(5));
        assert!(
            !second.state.is_taken_over(),
            "older records change nothing"
        );
        fence.on_record("c", "elsewhere", &at(12));
        assert!(second.state.is_taken_over());

        let (late, _) = fence.register("c", "conn-0", at(3));
        assert!(late.state.is_taken_over(), "a stale connect loses at once");
    }

    /// A shutdown tells every live connection, and every one registered after it, through the
    /// same wait as a takeover; it is not a takeover.
    #[tokio::test]
    async fn a_shutdown_reaches_live_and_later_connections() {
        use futures_util::FutureExt as _;

        let fence = Arc::new(TakeoverFence::default());
        let (live, _) = fence.register("a", "conn-1", at(10));
        let state = live.state.clone();
        let waiting = tokio::spawn(async move { state.taken_over_or_shutting_down().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());

        fence.shut_down();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the wait ends at the shutdown")
            .expect("the waiting task");
        assert!(!live.state.is_taken_over());
        assert!(live.state.taken_over().now_or_never().is_none());

        let (later, _) = fence.register("b", "conn-2", at(11));
        assert!(later.state.taken_over_or_shutting_down().now_or_never().is_some());
        assert!(!later.state.is_taken_over());
    }

    /// The waits end when their signal comes, whether it came before or while they wait.
    #[tokio::test]
    async fn waiting_for_a_takeover_and_a_finish() {
        use futures_util::FutureExt as _;

        let fence = Arc::new(TakeoverFence::default());
        let (first, _) = fence.register("c", "conn-1", at(10));
        let state = first.state.clone();
        let waiting = tokio::spawn(async move { state.taken_over().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(first.state.taken_over().now_or_never().is_none());

        let (_second, predecessor) = fence.register("c", "conn-2", at(11));
        let Some(predecessor) = predecessor else {
            panic!("the second connection takes over the first");
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the wait for the takeover ends")
            .expect("the waiting task");
        assert!(first.state.taken_over().now_or_never().is_some());

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

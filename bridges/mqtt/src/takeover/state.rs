//! What the fence tells one connection, and what it watches of it: the signals that end a
//! connection (a newer connection took its client id, the client fell silent past its keep-alive,
//! its credentials expired, the gateway shuts down), and that it has finished.
//!
//! An idle connection waits for one signal, in one allocation it shares with the fence: its
//! keep-alive and its credentials' expiry are deadlines the fence's sweep checks
//! ([`super::TakeoverFence::sweep`]), not timers in every connection's task. A timer was 112 bytes
//! of every idle connection, and a packet re-armed it in the runtime's timer wheel; now a packet
//! stores a time.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

/// One connection's signals; clones share them.
#[derive(Debug, Clone)]
pub struct ConnectionState(Arc<Signals>);

#[derive(Debug)]
struct Signals {
    /// Whose signals: kept here once, for the fence's entry and the connection's registration.
    client_id: Box<str>,
    connection: Box<str>,
    /// The signals set, as the bits below.
    signals: AtomicU8,
    changed: Notify,
    /// When the client was last heard from, in ms of the fence's clock.
    heard_ms: AtomicU64,
    /// How long the client may stay silent (one and a half keep-alives), in ms; 0 for no limit.
    silence_ms: AtomicU64,
    /// When the client's credentials expire, in ms of the fence's clock; 0 when they do not.
    expires_ms: AtomicU64,
}

const TAKEN_OVER: u8 = 1;
const FINISHED: u8 = 2;
const SHUTTING_DOWN: u8 = 4;
const SILENT: u8 = 8;
const EXPIRED: u8 = 16;

/// The signals that end a connection.
const ENDS: u8 = TAKEN_OVER | SHUTTING_DOWN | SILENT | EXPIRED;

/// Why a connection must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A newer connection took the client id.
    TakenOver,
    /// The client was silent for one and a half keep-alive periods.
    Silent,
    /// The client's credentials expired.
    Expired,
    /// The gateway shuts down.
    ShuttingDown,
}

impl ConnectionState {
    /// The signals of `connection`, which connected with `client_id`; none set.
    pub(super) fn new(client_id: &str, connection: &str) -> Self {
        Self(Arc::new(Signals {
            client_id: client_id.into(),
            connection: connection.into(),
            signals: AtomicU8::default(),
            changed: Notify::new(),
            heard_ms: AtomicU64::default(),
            silence_ms: AtomicU64::default(),
            expires_ms: AtomicU64::default(),
        }))
    }

    pub(super) fn client_id(&self) -> &str {
        &self.0.client_id
    }

    pub(super) fn connection(&self) -> &str {
        &self.0.connection
    }

    /// A newer connection took the client id.
    pub fn take_over(&self) {
        self.0.set(TAKEN_OVER);
    }

    /// Once the connection must end, for any [`Ending`]. Cancel-safe.
    pub fn ending(&self) -> impl Future<Output = ()> + '_ {
        self.0.until(ENDS)
    }

    /// Why the connection must end, if it must: a takeover first, then a shutdown (the client
    /// did nothing wrong, and its will is not due), then its silence or expiry.
    pub fn ended_by(&self) -> Option<Ending> {
        let signals = self.0.signals.load(Ordering::Acquire);
        [
            (TAKEN_OVER, Ending::TakenOver),
            (SHUTTING_DOWN, Ending::ShuttingDown),
            (SILENT, Ending::Silent),
            (EXPIRED, Ending::Expired),
        ]
        .into_iter()
        .find_map(|(bit, ending)| (signals & bit != 0).then_some(ending))
    }

    pub(super) fn shut_down(&self) {
        self.0.set(SHUTTING_DOWN);
    }

    pub(super) fn finish(&self) {
        self.0.set(FINISHED);
    }

    /// Once the connection has finished. Cancel-safe.
    pub fn finished(&self) -> impl Future<Output = ()> + '_ {
        self.0.until(FINISHED)
    }

    /// From `now_ms` on, the client may be silent for `silence` at most, and its credentials
    /// expire after `expires_in`; `None`: no such limit.
    pub(super) fn watch(
        &self,
        now_ms: u64,
        silence: Option<Duration>,
        expires_in: Option<Duration>,
    ) {
        let signals = &self.0;
        signals.heard_ms.store(now_ms, Ordering::Relaxed);
        // Released after the time heard: a sweep that sees the limit sees that time too.
        signals.silence_ms.store(
            silence.map_or(0, |silence| millis(silence).max(1)),
            Ordering::Release,
        );
        signals.expires_ms.store(
            expires_in.map_or(0, |left| now_ms.saturating_add(millis(left)).max(1)),
            Ordering::Relaxed,
        );
    }

    /// The client was heard from at `now_ms`. A sweep that found it silent meanwhile (the
    /// connection was busy, the client's packets waited in the socket) is taken back.
    pub(super) fn heard(&self, now_ms: u64) {
        let signals = &self.0;
        signals.heard_ms.store(now_ms, Ordering::Relaxed);
        if signals.is_set(SILENT) {
            signals.signals.fetch_and(!SILENT, Ordering::AcqRel);
        }
    }

    /// Signals the deadlines passed by `now_ms`.
    pub(super) fn check_deadlines(&self, now_ms: u64) {
        let signals = &self.0;
        let silence = signals.silence_ms.load(Ordering::Acquire);
        let heard = signals.heard_ms.load(Ordering::Relaxed);
        // More than the limit: times are whole milliseconds, so the client had all of it.
        if silence > 0 && now_ms.saturating_sub(heard) > silence && !signals.is_set(SILENT) {
            signals.set(SILENT);
        }
        let expires = signals.expires_ms.load(Ordering::Relaxed);
        if expires > 0 && now_ms >= expires && !signals.is_set(EXPIRED) {
            signals.set(EXPIRED);
        }
    }
}

/// A duration in whole milliseconds (saturating).
pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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
    /// wait for an end is in every idle connection's task, and each layer would add to it.
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

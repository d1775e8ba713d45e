//! Admitting a connection: the process's caps, then its listener's, each a count of open
//! connections in all and per source address and a rate of new ones per address. An admitted
//! connection holds a [`Permit`] that gives its place back when the connection ends; a refused one
//! is counted (`courier_limit_refusals_total`) and answered by its front end in its protocol.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use super::{LimitsConfig, host, rate::KeyedRate};
use crate::metrics::{self, Protocol};

/// Admissions between two sweeps of the rate table (see [`KeyedRate::forget_idle`]).
const SWEEP_EVERY: u64 = 1024;

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The process or the listener serves as many connections as it may.
    #[error("the server has as many connections as it may serve; try again later")]
    Connections,
    /// The client's address holds as many connections as one address may.
    #[error("too many connections from this address")]
    ConnectionsPerAddress,
    /// The client's address opens connections faster than one address may.
    #[error("connecting too fast from this address; slow down")]
    ConnectRate,
}

impl Refusal {
    /// The limit's name, as the config key and the metric's `limit` label say it.
    pub fn limit(self) -> &'static str {
        match self {
            Self::Connections => "max_connections",
            Self::ConnectionsPerAddress => "max_connections_per_address",
            Self::ConnectRate => "connect_rate_per_address",
        }
    }

    /// Whether the client is refused for its pace (MQTT 5 answers 0x9F Connection rate exceeded)
    /// rather than for a count (0x97 Quota exceeded).
    pub fn is_rate(self) -> bool {
        self == Self::ConnectRate
    }
}

/// The connection limits of the process, from which each listener takes its [`ListenerGate`].
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    process: Arc<Counts>,
    config: LimitsConfig,
}

impl ConnectionLimits {
    /// The process's limits from `[limits]`.
    pub fn new(config: &LimitsConfig) -> Self {
        let max_connections = config
            .max_connections
            .unwrap_or_else(default_max_connections);
        Self {
            process: Arc::new(Counts::new(
                max_connections,
                config.max_connections_per_address,
                config.connect_rate_per_address,
            )),
            config: config.clone(),
        }
    }

    /// No limits at all (tests, and front ends started without a `[limits]` table).
    pub fn unlimited() -> Self {
        Self {
            process: Arc::new(Counts::new(0, 0, 0)),
            config: LimitsConfig::default(),
        }
    }

    /// The gate of the listener the ready line calls `listener`, counting for `protocol`.
    pub fn gate(&self, protocol: Protocol, listener: &'static str) -> ListenerGate {
        let own = self.config.listeners.get(listener).map(|limits| {
            Arc::new(Counts::new(
                limits.max_connections.unwrap_or(0),
                limits.max_connections_per_address.unwrap_or(0),
                limits.connect_rate_per_address.unwrap_or(0),
            ))
        });
        ListenerGate {
            protocol,
            process: self.process.clone(),
            own,
        }
    }
}

/// 90% of the soft open-files limit: the rest is left to the log's files, the Kafka client and the
/// listeners themselves, so a flood meets a clean refusal, not an `accept` that fails.
fn default_max_connections() -> u32 {
    let open_files = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    u32::try_from(open_files / 10 * 9)
        .unwrap_or(u32::MAX)
        .max(1)
}

/// One listener's door: the process's counts and, when `[limits.listeners.<name>]` sets any, its own.
#[derive(Debug, Clone)]
pub struct ListenerGate {
    protocol: Protocol,
    process: Arc<Counts>,
    own: Option<Arc<Counts>>,
}

impl ListenerGate {
    /// A gate that admits everyone (tests).
    pub fn unlimited(protocol: Protocol) -> Self {
        ConnectionLimits::unlimited().gate(protocol, "")
    }

    /// Admits a connection from `peer`, or says why not (and counts the refusal).
    pub fn admit(&self, peer: SocketAddr) -> Result<Permit, Refusal> {
        let address = host(peer.ip());
        let admitted = self.process.admit(address).and_then(|process| {
            let own = match &self.own {
                Some(counts) => Some(counts.admit(address)?),
                None => None,
            };
            Ok(Permit {
                _process: process,
                _own: own,
            })
        });
        if let Err(refusal) = admitted {
            metrics::limit_refused(self.protocol, refusal.limit());
            tracing::debug!(%peer, %refusal, "connection refused");
        }
        admitted
    }

    /// The protocol the gate counts for.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}

/// An admitted connection's place: given back when dropped.
#[derive(Debug)]
pub struct Permit {
    _process: Slot,
    _own: Option<Slot>,
}

/// Open connections and new-connection rates of one scope (the process, or one listener).
#[derive(Debug)]
struct Counts {
    /// 0: no limit.
    max_connections: u32,
    /// 0: no limit.
    max_per_address: u32,
    open: AtomicU32,
    /// Open connections per address, kept only while a per-address limit is set; an address
    /// leaves the table with its last connection.
    per_address: Mutex<HashMap<IpAddr, u32>>,
    rate: Option<KeyedRate<IpAddr>>,
    admissions: AtomicU64,
}

impl Counts {
    fn new(max_connections: u32, max_per_address: u32, rate_per_address: u32) -> Self {
        Self {
            max_connections,
            max_per_address,
            open: AtomicU32::new(0),
            per_address: Mutex::new(HashMap::new()),
            rate: KeyedRate::per_second(rate_per_address),
            admissions: AtomicU64::new(0),
        }
    }

    fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Slot, Refusal> {
        if let Some(rate) = &self.rate {
            if self.admissions.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
                rate.forget_idle();
            }
            if !rate.check(&address) {
                return Err(Refusal::ConnectRate);
            }
        }
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (self.max_connections == 0 || open < self.max_connections).then_some(open + 1)
            });
        if taken.is_err() {
            return Err(Refusal::Connections);
        }
        if self.max_per_address > 0 {
            let mut per_address = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
            let open = per_address.entry(address).or_insert(0);
            if *open >= self.max_per_address {
                drop(per_address);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::ConnectionsPerAddress);
            }
            *open += 1;
        }
        Ok(Slot {
            counts: self.clone(),
            address,
        })
    }

    fn release(&self, address: IpAddr) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if self.max_per_address > 0 {
            let mut per_address = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(open) = per_address.get_mut(&address) {
                *open -= 1;
                if *open == 0 {
                    per_address.remove(&address);
                }
            }
        }
    }
}

/// One place in one [`Counts`].
#[derive(Debug)]
struct Slot {
    counts: Arc<Counts>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.release(self.address);
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;
    use crate::limits::ListenerLimits;

    fn peer(address: &str) -> SocketAddr {
        SocketAddr::new(address.parse().unwrap(), 40000)
    }

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_it_back() {
        let limits = ConnectionLimits::new(&LimitsConfig {
            max_connections_per_address: 2,
            ..LimitsConfig::default()
        });
        let gate = limits.gate(Protocol::Mqtt, "mqtt");
        let first = gate.admit(peer("10.0.0.1")).unwrap();
        let _second = gate.admit(peer("10.0.0.1")).unwrap();
        assert_eq!(
            gate.admit(peer("10.0.0.1")).unwrap_err(),
            Refusal::ConnectionsPerAddress
        );
        // Another address is not held to the first one's count.
        let _other = gate.admit(peer("10.0.0.2")).unwrap();
        drop(first);
        assert!(gate.admit(peer("10.0.0.1")).is_ok());
        // The table forgets an address with its last connection.
        drop(_other);
        let table = limits.process.per_address.lock().unwrap();
        assert!(!table.contains_key(&"10.0.0.2".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn the_process_cap_counts_every_listener_and_a_listener_cap_only_its_own() {
        let limits = ConnectionLimits::new(&LimitsConfig {
            max_connections: Some(3),
            listeners: BTreeMap::from([(
                "amqp".to_owned(),
                ListenerLimits {
                    max_connections: Some(1),
                    ..ListenerLimits::default()
                },
            )]),
            ..LimitsConfig::default()
        });
        let mqtt = limits.gate(Protocol::Mqtt, "mqtt");
        let amqp = limits.gate(Protocol::Amqp, "amqp");
        let _a = amqp.admit(peer("10.0.0.1")).unwrap();
        assert_eq!(
            amqp.admit(peer("10.0.0.2")).unwrap_err(),
            Refusal::Connections
        );
        let _m1 = mqtt.admit(peer("10.0.0.3")).unwrap();
        let _m2 = mqtt.admit(peer("10.0.0.4")).unwrap();
        assert_eq!(
            mqtt.admit(peer("10.0.0.5")).unwrap_err(),
            Refusal::Connections
        );
        // A refusal by the listener gave the process's place back.
        assert_eq!(limits.process.open.load(Ordering::Acquire), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_opening_too_fast_is_refused_until_its_bucket_refills() {
        let limits = ConnectionLimits::new(&LimitsConfig {
            connect_rate_per_address: 5,
            ..LimitsConfig::default()
        });
        let gate = limits.gate(Protocol::Grpc, "grpc");
        let admitted: Vec<_> = (0..5)
            .map(|_| gate.admit(peer("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(
            gate.admit(peer("10.0.0.1")).unwrap_err(),
            Refusal::ConnectRate
        );
        assert!(gate.admit(peer("10.0.0.2")).is_ok());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(gate.admit(peer("10.0.0.1")).is_ok());
        drop(admitted);
    }

    #[test]
    fn the_default_cap_leaves_room_under_the_open_files_limit() {
        let cap = default_max_connections();
        assert!(cap >= 1);
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert!(u64::from(cap) < soft.max(2));
    }
}

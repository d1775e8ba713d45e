//! Quotas: what each principal may send and be delivered per second, every protocol together and
//! through each protocol. All connections of one principal share its buckets (an account), so
//! opening more connections buys nothing; an account is forgotten with its last connection.
//!
//! A principal is known by its name; an anonymous client, which has none, by its MQTT client id
//! or else its source address (an IPv6 client by its /64).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{
    OverQuota, QuotaConfig, QuotaRates, host,
    rate::{Rate, TooMuch},
};
use crate::{Error, Result, metrics::Protocol};

/// What the policy's `[[quotas]]` say of one principal, over the config's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaRules {
    /// Its rates for every protocol together.
    pub overall: Option<QuotaRates>,
    /// Its rates through the protocol asked about.
    pub protocol: Option<QuotaRates>,
}

/// Whose buckets a connection draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum QuotaKey {
    /// An authenticated principal, by name.
    Principal(String),
    /// An anonymous MQTT client, by client id.
    Client(String),
    /// An anonymous client, by source address.
    Address(IpAddr),
}

impl QuotaKey {
    /// An anonymous client's key: its MQTT client id, else its address (an IPv6 client by its /64).
    pub fn anonymous(client_id: Option<&str>, peer: Option<SocketAddr>) -> Self {
        match (client_id, peer) {
            (Some(client_id), _) => Self::Client(client_id.to_owned()),
            (None, Some(peer)) => Self::Address(host(peer.ip())),
            (None, None) => Self::Client(String::new()),
        }
    }
}

impl std::fmt::Display for QuotaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Principal(name) => write!(f, "{name}"),
            Self::Client(client_id) => write!(f, "anonymous client {client_id:?}"),
            Self::Address(address) => write!(f, "anonymous clients from {address}"),
        }
    }
}

/// Every account of the process, by key.
#[derive(Debug)]
pub struct Quotas {
    config: QuotaConfig,
    accounts: Mutex<Accounts>,
    /// What accounts' last use is measured from.
    epoch: tokio::time::Instant,
}

/// The accounts by key, and how many were made since the last sweep.
#[derive(Debug, Default)]
struct Accounts {
    by_key: HashMap<QuotaKey, Arc<Account>>,
    made: usize,
}

/// Accounts made between two sweeps of the table.
const SWEEP_EVERY: usize = 256;
/// An account unused this long holds full buckets (each holds one second's worth): forgetting it
/// forgets nothing.
const IDLE: Duration = Duration::from_secs(2);

impl Quotas {
    /// The quotas of `[limits.quotas]`.
    pub fn new(config: &QuotaConfig) -> Arc<Self> {
        Arc::new(Self {
            config: config.clone(),
            accounts: Mutex::new(Accounts::default()),
            epoch: tokio::time::Instant::now(),
        })
    }

    /// No quotas (tests, front ends started without `[limits]`).
    pub fn unlimited() -> Arc<Self> {
        Self::new(&QuotaConfig::default())
    }

    /// The usage handle of `key`'s account for a connection (or call) of `protocol`, under the
    /// policy's `rules` for its principal; `None` when no quota applies to it, so an unlimited
    /// client pays nothing.
    ///
    /// An account is made by its principal's first connection that asks for it (an MQTT client
    /// asks at its first publish or group subscription), with the rates of that moment: a policy
    /// changed while the principal is connected applies once all its connections have closed (or
    /// to its connections through a protocol it had not used yet).
    pub fn usage(&self, key: QuotaKey, protocol: Protocol, rules: &QuotaRules) -> Option<Usage> {
        let overall = rules.overall.unwrap_or(self.config.default);
        let own = rules.protocol.unwrap_or(*self.protocol_rates(protocol));
        if overall.is_unlimited() && own.is_unlimited() {
            return None;
        }
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let account = match accounts.by_key.get(&key) {
            Some(account) => account.clone(),
            None => {
                // Sweeping here keeps the table as large as the accounts in use, with no task of
                // its own. An account outlives its connections (a gRPC call's is gone when the
                // call ends) until its buckets are full again, so calls one after another draw
                // from one account.
                accounts.made += 1;
                if accounts.made >= SWEEP_EVERY {
                    accounts.made = 0;
                    let now = self.elapsed();
                    accounts.by_key.retain(|_, account| {
                        Arc::strong_count(account) > 1 || account.idle_for(now) < IDLE
                    });
                }
                let account = Arc::new(Account::new(&overall));
                accounts.by_key.insert(key.clone(), account.clone());
                account
            }
        };
        drop(accounts);
        account.protocols[protocol as usize].get_or_init(|| Buckets::new(&own));
        account.used_at(self.elapsed());
        Some(Usage {
            account,
            protocol,
            key: Arc::new(key),
            over_quota: self.config.over_quota,
            epoch: self.epoch,
        })
    }

    fn elapsed(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn protocol_rates(&self, protocol: Protocol) -> &QuotaRates {
        match protocol {
            Protocol::Grpc => &self.config.grpc,
            Protocol::Mqtt => &self.config.mqtt,
            Protocol::Amqp => &self.config.amqp,
        }
    }
}

/// One principal's buckets: every protocol together, and each protocol's own (made when the
/// principal first connects through it).
#[derive(Debug)]
struct Account {
    overall: Buckets,
    protocols: [OnceLock<Buckets>; Protocol::ALL.len()],
    /// When it was last drawn from, in milliseconds from the table's epoch.
    last_used_ms: AtomicU64,
}

impl Account {
    fn new(overall: &QuotaRates) -> Self {
        Self {
            overall: Buckets::new(overall),
            protocols: Default::default(),
            last_used_ms: AtomicU64::new(0),
        }
    }

    fn used_at(&self, since_epoch: Duration) {
        let ms = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
        self.last_used_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn idle_for(&self, now: Duration) -> Duration {
        now.saturating_sub(Duration::from_millis(
            self.last_used_ms.load(Ordering::Relaxed),
        ))
    }
}

#[derive(Debug)]
struct Buckets {
    messages_in: Option<Rate>,
    bytes_in: Option<Rate>,
    messages_out: Option<Rate>,
    bytes_out: Option<Rate>,
}

impl Buckets {
    fn new(rates: &QuotaRates) -> Self {
        Self {
            messages_in: Rate::per_second(rates.messages_in_per_second),
            bytes_in: Rate::per_second(rates.bytes_in_per_second),
            messages_out: Rate::per_second(rates.messages_out_per_second),
            bytes_out: Rate::per_second(rates.bytes_out_per_second),
        }
    }
}

/// A connection's (or call's) hold on its principal's account.
#[derive(Debug, Clone)]
pub struct Usage {
    account: Arc<Account>,
    protocol: Protocol,
    key: Arc<QuotaKey>,
    over_quota: OverQuota,
    epoch: tokio::time::Instant,
}

impl Usage {
    /// What a client over its quota meets.
    pub fn over_quota(&self) -> OverQuota {
        self.over_quota
    }

    /// The same hold, only ever slowing the client: for protocols (or versions) with no way to
    /// refuse a message but ending the connection.
    pub fn slowed(self) -> Self {
        Self {
            over_quota: OverQuota::Slow,
            ..self
        }
    }

    /// Takes `messages` and `bytes` the client sends: waits until the quotas allow them, or with
    /// `over_quota = "refuse"` refuses them at once when they do not.
    pub async fn take_in(&self, messages: u64, bytes: u64) -> Result<()> {
        match self.over_quota {
            OverQuota::Slow => {
                self.wait_in(messages, bytes).await;
                Ok(())
            }
            OverQuota::Refuse => self.try_take_in(messages, bytes),
        }
    }

    /// Takes what the client sends, waiting as long as the quotas need (where a protocol has no way
    /// to refuse but closing the connection, MQTT 3.1.1, a client is only ever slowed).
    pub async fn wait_in(&self, messages: u64, bytes: u64) {
        self.touch();
        for buckets in self.buckets() {
            take(&buckets.messages_in, messages).await;
            take(&buckets.bytes_in, bytes).await;
        }
    }

    /// Takes what the client sends if every quota allows it now; else refuses it.
    pub fn try_take_in(&self, messages: u64, bytes: u64) -> Result<()> {
        self.touch();
        for buckets in self.buckets() {
            for (rate, units, what) in [
                (&buckets.messages_in, messages, "messages"),
                (&buckets.bytes_in, bytes, "bytes"),
            ] {
                if let Some(rate) = rate
                    && let Err(too_much) = rate.try_take(units)
                {
                    return Err(Error::QuotaExceeded {
                        who: self.key.to_string(),
                        what,
                        at_once: too_much == TooMuch::Never,
                    });
                }
            }
        }
        Ok(())
    }

    /// Takes what is delivered to the client, waiting as long as the quotas need: deliveries are only
    /// ever slowed.
    pub async fn take_out(&self, messages: u64, bytes: u64) {
        self.touch();
        for buckets in self.buckets() {
            take(&buckets.messages_out, messages).await;
            take(&buckets.bytes_out, bytes).await;
        }
    }

    /// Whether any delivery quota applies (else deliveries need not pass through [`Usage::take_out`]).
    pub fn limits_out(&self) -> bool {
        self.buckets()
            .any(|buckets| buckets.messages_out.is_some() || buckets.bytes_out.is_some())
    }

    /// Whether any quota on what the client sends applies.
    pub fn limits_in(&self) -> bool {
        self.buckets()
            .any(|buckets| buckets.messages_in.is_some() || buckets.bytes_in.is_some())
    }

    fn touch(&self) {
        self.account.used_at(self.epoch.elapsed());
    }

    /// The protocol's own buckets first, then the overall ones.
    fn buckets(&self) -> impl Iterator<Item = &Buckets> {
        self.account.protocols[self.protocol as usize]
            .get()
            .into_iter()
            .chain(std::iter::once(&self.account.overall))
    }
}

async fn take(rate: &Option<Rate>, units: u64) {
    if let Some(rate) = rate {
        rate.take(units).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(over_quota: OverQuota) -> QuotaConfig {
        QuotaConfig {
            over_quota,
            default: QuotaRates {
                messages_in_per_second: 10,
                ..QuotaRates::default()
            },
            mqtt: QuotaRates {
                bytes_in_per_second: 1000,
                ..QuotaRates::default()
            },
            ..QuotaConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn connections_of_one_principal_share_its_account_across_protocols() {
        let quotas = Quotas::new(&config(OverQuota::Refuse));
        let alice = || QuotaKey::Principal("alice".into());
        let none = QuotaRules::default();
        let mqtt = quotas.usage(alice(), Protocol::Mqtt, &none).unwrap();
        let grpc = quotas.usage(alice(), Protocol::Grpc, &none).unwrap();
        mqtt.take_in(6, 10).await.unwrap();
        grpc.take_in(4, 10).await.unwrap();
        let refused = grpc.take_in(1, 10).await.unwrap_err();
        assert!(
            matches!(
                refused,
                Error::QuotaExceeded {
                    what: "messages",
                    ..
                }
            ),
            "{refused}"
        );
        // Another principal has its own.
        let bob = quotas
            .usage(QuotaKey::Principal("bob".into()), Protocol::Grpc, &none)
            .unwrap();
        bob.take_in(10, 0).await.unwrap();
        // The protocol's own quota holds too.
        tokio::time::advance(Duration::from_secs(1)).await;
        // More bytes at once than a second's worth is never taken (it would be charged less than
        // it is), whatever the bucket holds.
        let refused = mqtt.take_in(1, 1001).await.unwrap_err();
        assert!(
            matches!(
                refused,
                Error::QuotaExceeded {
                    what: "bytes",
                    at_once: true,
                    ..
                }
            ),
            "{refused}"
        );
        assert!(mqtt.take_in(1, 1000).await.is_ok());
        assert!(mqtt.take_in(1, 10).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slowed_client_waits_its_share() {
        let quotas = Quotas::new(&config(OverQuota::Slow));
        let usage = quotas
            .usage(
                QuotaKey::Client("device-1".into()),
                Protocol::Amqp,
                &QuotaRules::default(),
            )
            .unwrap();
        let start = tokio::time::Instant::now();
        for _ in 0..30 {
            usage.take_in(1, 0).await.unwrap();
        }
        // 10 at once, then 20 more at 10 a second.
        assert!(
            start.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_quota_costs_nothing_and_an_account_outlives_its_calls_until_idle() {
        let none = QuotaRules::default();
        let a = || QuotaKey::Principal("a".into());
        assert!(
            Quotas::unlimited()
                .usage(a(), Protocol::Grpc, &none)
                .is_none()
        );
        let quotas = Quotas::new(&config(OverQuota::Refuse));
        // Calls one after another (each its own usage, dropped when it ends) share one account.
        for _ in 0..10 {
            let call = quotas.usage(a(), Protocol::Grpc, &none).unwrap();
            call.take_in(1, 0).await.unwrap();
        }
        let call = quotas.usage(a(), Protocol::Grpc, &none).unwrap();
        assert!(
            call.take_in(1, 0).await.is_err(),
            "the 11th message in a second passed"
        );
        drop(call);
        // Idle accounts go at the next sweep.
        tokio::time::advance(IDLE * 2).await;
        for n in 0..SWEEP_EVERY {
            drop(quotas.usage(QuotaKey::Principal(format!("p{n}")), Protocol::Grpc, &none));
        }
        let accounts = quotas.accounts.lock().unwrap();
        assert!(!accounts.by_key.contains_key(&a()));
    }

    #[test]
    fn anonymous_clients_are_known_by_client_id_or_address() {
        let peer: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(
            QuotaKey::anonymous(Some("d1"), Some(peer)),
            QuotaKey::Client("d1".into())
        );
        assert_eq!(
            QuotaKey::anonymous(None, Some(peer)),
            QuotaKey::Address("2001:db8::".parse().unwrap())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_policys_rates_for_a_principal_win_over_the_defaults() {
        let quotas = Quotas::new(&config(OverQuota::Refuse));
        let generous = QuotaRules {
            overall: Some(QuotaRates::default()),
            protocol: Some(QuotaRates::default()),
        };
        assert!(
            quotas
                .usage(QuotaKey::Principal("ops".into()), Protocol::Mqtt, &generous)
                .is_none(),
            "a rule with no rates lifts the defaults"
        );
        let strict = QuotaRules {
            overall: None,
            protocol: Some(QuotaRates {
                messages_in_per_second: 1,
                ..QuotaRates::default()
            }),
        };
        let usage = quotas
            .usage(
                QuotaKey::Principal("greedy".into()),
                Protocol::Grpc,
                &strict,
            )
            .unwrap();
        usage.take_in(1, 0).await.unwrap();
        assert!(usage.take_in(1, 0).await.is_err());
    }
}

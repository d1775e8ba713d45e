//! Topics an account creates by naming them (`topics.auto_create_per_minute`): with auto-creation
//! on, a client allowed to produce to `devices/*` could otherwise create topics without end, each
//! with its partitions on the brokers. Counted per account (a principal, or an anonymous client by
//! its client id or address) on each replica: a total across replicas would need each topic's
//! creator kept where every replica reads it, and Kafka's topic configs cannot carry one.
//!
//! The account is the one the request being served is charged to: the authorization layer, which
//! knows the caller, runs each request inside [`charged_to`], and the topic policy, deep in the
//! shared stack where creation happens, asks [`TopicCreations::take`]. Requests charged to nobody
//! (the gateway's own) create freely.

use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
};

use super::{QuotaKey, rate::KeyedRate};
use crate::{Error, Result};

/// Creations between two sweeps of the idle buckets.
const SWEEP_EVERY: u64 = 1024;

tokio::task_local! {
    /// The account the log requests under way are made for.
    static ACCOUNT: QuotaKey;
}

/// Runs `future` with the log requests it makes charged to `account`.
pub async fn charged_to<F: Future>(account: QuotaKey, future: F) -> F::Output {
    ACCOUNT.scope(account, future).await
}

/// How many topics each account may create by naming them, per minute, on this replica.
#[derive(Debug)]
pub struct TopicCreations {
    per_minute: u32,
    rate: Option<KeyedRate<QuotaKey>>,
    taken: AtomicU64,
}

impl TopicCreations {
    /// `per_minute` creations per account (and as many at once); 0 is no limit.
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            per_minute,
            rate: KeyedRate::per_minute(per_minute),
            taken: AtomicU64::new(0),
        }
    }

    /// Takes one creation from the account the current request is charged to, or says it has
    /// none left this minute.
    pub fn take(&self) -> Result<()> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        let Ok(account) = ACCOUNT.try_with(QuotaKey::clone) else {
            return Ok(());
        };
        if self.taken.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            rate.forget_idle();
        }
        if rate.check(&account) {
            Ok(())
        } else {
            Err(Error::TopicCreationLimited {
                who: account.to_string(),
                per_minute: self.per_minute,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_account_creates_its_own_share_and_the_gateway_without_limit() {
        let creations = TopicCreations::per_minute(2);
        let alice = || QuotaKey::Principal("alice".into());
        let bob = QuotaKey::Principal("bob".into());
        for _ in 0..2 {
            charged_to(alice(), async { creations.take() })
                .await
                .unwrap();
        }
        let refused = charged_to(alice(), async { creations.take() }).await;
        assert!(
            matches!(&refused, Err(Error::TopicCreationLimited { who, per_minute: 2 }) if who == "alice"),
            "{refused:?}"
        );
        charged_to(bob, async { creations.take() }).await.unwrap();
        // Charged to nobody: the gateway's own requests.
        for _ in 0..10 {
            creations.take().unwrap();
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        charged_to(alice(), async { creations.take() })
            .await
            .unwrap();
        assert!(TopicCreations::per_minute(0).take().is_ok());
    }
}

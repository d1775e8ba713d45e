//! Topics an account creates by naming them (`topics.auto_create_per_minute`): with auto-creation
//! on, a client allowed to produce to `devices/*` could otherwise create topics without end, each
//! with its partitions on the brokers. Counted per account (a principal, or an anonymous client by
//! its client id or address) on each replica: a total across replicas would need each topic's
//! creator kept where every replica reads it, and Kafka's topic configs cannot carry one.
//!
//! The account is the one the request being served is charged to: the authorization layer, which
//! knows the caller, runs each request inside [`charged_to`], and the topic policy, deep in the
//! shared stack where creation happens, asks [`TopicCreations::may_create`] before creating and
//! books [`TopicCreations::created`] only once a topic was made: a creation that failed, or found
//! the topic made meanwhile, costs nothing. Requests charged to nobody (the gateway's own) create
//! freely.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use super::QuotaKey;
use crate::{
    Error, Result,
    metrics::{self, Protocol},
};

/// The window an account's creations are counted in.
const WINDOW: Duration = Duration::from_secs(60);

tokio::task_local! {
    /// The account (and its protocol) the log requests under way are made for.
    static ACCOUNT: Arc<(QuotaKey, Protocol)>;
}

/// Runs `future` with the log requests it makes charged to `account`, a client of its protocol.
/// Shared, so charging a request (every produce is one) costs no copy of the account's name.
pub async fn charged_to<F: Future>(account: Arc<(QuotaKey, Protocol)>, future: F) -> F::Output {
    ACCOUNT.scope(account, future).await
}

/// How many topics each account may create by naming them, per minute, on this replica.
#[derive(Debug)]
pub struct TopicCreations {
    per_minute: u32,
    /// Each account's creations in its current window: when the window began, how many.
    windows: Mutex<HashMap<QuotaKey, (Instant, u32)>>,
}

/// The account a creation is booked to, from [`TopicCreations::may_create`].
#[derive(Debug)]
pub struct Booking(Option<QuotaKey>);

impl TopicCreations {
    /// `per_minute` creations per account in any minute from its first; 0 is no limit.
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::default(),
        }
    }

    /// Whether the account the current request is charged to may create a topic now; the
    /// booking to pass to [`TopicCreations::created`] once it did.
    pub fn may_create(&self) -> Result<Booking> {
        if self.per_minute == 0 {
            return Ok(Booking(None));
        }
        let Ok(charge) = ACCOUNT.try_with(Arc::clone) else {
            return Ok(Booking(None));
        };
        let (account, protocol) = &*charge;
        let now = Instant::now();
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let used = windows
            .get(account)
            .filter(|(began, _)| now.duration_since(*began) < WINDOW)
            .map_or(0, |(_, used)| *used);
        if used >= self.per_minute {
            metrics::limit_refused(*protocol, "auto_create_per_minute");
            return Err(Error::TopicCreationLimited {
                who: account.to_string(),
                per_minute: self.per_minute,
            });
        }
        Ok(Booking(Some(account.clone())))
    }

    /// Books a topic made for `booking`'s account.
    pub fn created(&self, booking: Booking) {
        let Some(account) = booking.0 else {
            return;
        };
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        // Accounts whose window is over are forgotten as the table is touched: it holds the
        // accounts that created a topic in the last minute.
        if windows.len() >= 1024 {
            windows.retain(|_, (began, _)| now.duration_since(*began) < WINDOW);
        }
        let window = windows.entry(account).or_insert((now, 0));
        if now.duration_since(window.0) >= WINDOW {
            *window = (now, 0);
        }
        window.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(creations: &TopicCreations) -> Result<()> {
        let booking = creations.may_create()?;
        creations.created(booking);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn each_account_creates_its_own_share_and_the_gateway_without_limit() {
        let creations = TopicCreations::per_minute(2);
        async fn as_alice<T>(request: impl Future<Output = T>) -> T {
            let alice = QuotaKey::Principal("alice".into());
            charged_to(Arc::new((alice, Protocol::Grpc)), request).await
        }
        as_alice(async { create(&creations) }).await.unwrap();
        // An attempt that creates nothing (it failed, or the topic was made meanwhile) is free.
        as_alice(async { creations.may_create().map(drop) })
            .await
            .unwrap();
        as_alice(async { create(&creations) }).await.unwrap();
        let refused = as_alice(async { create(&creations) }).await;
        assert!(
            matches!(&refused, Err(Error::TopicCreationLimited { who, per_minute: 2 }) if who == "alice"),
            "{refused:?}"
        );
        let bob = QuotaKey::Principal("bob".into());
        charged_to(Arc::new((bob, Protocol::Amqp)), async {
            create(&creations)
        })
        .await
        .unwrap();
        // Charged to nobody: the gateway's own requests.
        for _ in 0..10 {
            create(&creations).unwrap();
        }
        tokio::time::advance(WINDOW).await;
        as_alice(async { create(&creations) }).await.unwrap();
        assert!(TopicCreations::per_minute(0).may_create().is_ok());
    }
}

//! Futures that finish in the order they were queued, with no memory until the first is queued.
//!
//! `FuturesOrdered::new` allocates (its ready queue and a stub task, about 150 bytes): made per
//! connection for what many never use (a subscriber publishes nothing, few deliver at QoS 2), it is
//! memory every idle connection holds. Boxed once made: inline, an empty `FuturesOrdered` is 64
//! bytes of every connection's task, twice (the publishes' and the QoS 2 recordings').

use std::{future::Future, task::Poll};

use futures_util::{StreamExt as _, stream::FuturesOrdered};

/// A [`FuturesOrdered`] made at the first push.
pub(crate) struct InOrder<F: Future>(Option<Box<FuturesOrdered<F>>>);

impl<F: Future> Default for InOrder<F> {
    fn default() -> Self {
        Self(None)
    }
}

impl<F: Future> InOrder<F> {
    /// Futures queued and not yet taken.
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |queued| queued.len())
    }

    pub(crate) fn push_back(&mut self, future: F) {
        self.0
            .get_or_insert_with(|| Box::new(FuturesOrdered::new()))
            .push_back(future);
    }

    /// The oldest future's output, once it has finished; `None` at once when none is queued.
    /// A poll function rather than an `async fn`: the wait is in every idle connection's task,
    /// and the function's state would be two more words of it.
    pub(crate) fn next(&mut self) -> impl Future<Output = Option<F::Output>> + '_ {
        std::future::poll_fn(move |cx| match &mut self.0 {
            Some(queued) => queued.poll_next_unpin(cx),
            None => Poll::Ready(None),
        })
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;
    use tokio::sync::oneshot::{self, error::RecvError};

    use super::*;

    type Answer = std::pin::Pin<Box<dyn Future<Output = Result<u8, RecvError>>>>;

    #[test]
    fn nothing_is_made_until_a_future_is_queued_and_outputs_come_in_order() {
        let mut queue = InOrder::<Answer>::default();
        assert!(queue.0.is_none());
        assert_eq!(queue.next().now_or_never(), Some(None));
        let (first, first_answer) = oneshot::channel();
        queue.push_back(Box::pin(first_answer));
        queue.push_back(Box::pin(std::future::ready(Ok(2))));
        assert!(queue.0.is_some());
        assert_eq!(queue.len(), 2);
        // The second is ready, but comes after the first.
        assert_eq!(queue.next().now_or_never(), None);
        let _ = first.send(1);
        assert_eq!(queue.next().now_or_never(), Some(Some(Ok(1))));
        assert_eq!(queue.next().now_or_never(), Some(Some(Ok(2))));
        assert_eq!(queue.next().now_or_never(), Some(None));
    }
}

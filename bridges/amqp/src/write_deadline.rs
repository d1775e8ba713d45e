//! A stream whose writes fail once they have made no progress for a while.
//!
//! fe2o3's connection engine writes a connection's frames itself, and waits as long as a write
//! waits: a client that stops reading its socket would hold its connection, and every record its
//! receiver links took, for as long as it stays connected. Under [`WriteDeadline`] a write or flush
//! that waits `timeout` without a byte going out fails with `TimedOut`; the engine then stops, the
//! connection's links end, and what they held unsettled goes back to their groups. Every write
//! after that fails at once, so closing does not wait out the deadline again.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use courier_gateway::metrics::{self, Protocol};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// `S` with a deadline on progress of its writes.
#[derive(Debug)]
pub(crate) struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// When the current wait started running out, while a write waits; reset by progress.
    waiting: Option<Pin<Box<Sleep>>>,
    /// The deadline passed: the client is not reading.
    expired: bool,
}

impl<S> WriteDeadline<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            waiting: None,
            expired: false,
        }
    }

    /// Passes on a write's outcome, starting the deadline when it waits and failing it once the
    /// deadline has passed.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: Unpin,
    {
        if self.expired {
            return Poll::Ready(Err(timed_out(self.timeout)));
        }
        match write(Pin::new(&mut self.inner), cx) {
            Poll::Ready(outcome) => {
                self.waiting = None;
                Poll::Ready(outcome)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let waiting = self.waiting.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + timeout))
                });
                ready!(waiting.as_mut().poll(cx));
                self.expired = true;
                self.waiting = None;
                metrics::limit_refused(Protocol::Amqp, "write_timeout");
                Poll::Ready(Err(timed_out(timeout)))
            }
        }
    }
}

fn timed_out(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the client has read nothing for {timeout:?} (amqp.write_timeout)"),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .watch(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .watch(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().watch(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .watch(cx, |inner, cx| inner.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_out_the_deadline_fails_and_so_does_every_later_one() {
        let (_client, server) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(server, TIMEOUT);
        let started = Instant::now();
        let error = stream.write_all(&[0; 1024]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), TIMEOUT);
        // At once now: closing does not wait out the deadline again.
        let error = stream.flush().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_never_cut_off() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(server, TIMEOUT);
        // The client reads 64 bytes every 20 s: each wait is shorter than the deadline, though
        // the whole write takes far longer.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut read = 0;
            while read < 1024 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                read += client.read(&mut buf).await.unwrap();
            }
        });
        let started = Instant::now();
        stream.write_all(&[0; 1024]).await.unwrap();
        stream.flush().await.unwrap();
        assert!(started.elapsed() > TIMEOUT * 5);
        reader.await.unwrap();
    }
}

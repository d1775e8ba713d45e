//! The stream fe2o3 reads a client's frames from, each one checked ([`check`]) before fe2o3 sees
//! any of it.
//!
//! fe2o3 decodes frames with serde_amqp, which recurses without bound, and answers a frame it cannot
//! decode (or one past its limits) by dropping the connection without a word. [`FrameGuard`] reads
//! ahead of it: it hands fe2o3 the client's protocol header as it is, then one whole frame at a time,
//! once checked. A frame that fails is never handed on; the guard answers it in AMQP's way itself:
//! a CLOSE with the condition (`amqp:connection:framing-error`, `amqp:decode-error`, ...) and why,
//! preceded by an OPEN if fe2o3 has not sent its own yet. It writes the CLOSE between fe2o3's
//! frames: fe2o3 reads only between whole writes of its own, so when the guard is asked for more
//! bytes nothing of fe2o3's is half written. The guard then swallows whatever fe2o3 writes (nothing
//! may follow CLOSE), shuts its side, lets the client read the CLOSE (reading and dropping what it
//! still sends, for at most [`CLOSE_LINGER`], so the socket closes without a reset), and fails
//! fe2o3's read, which stops the connection: its links end as if the client had gone.

mod check;

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf as _, BytesMut};
use courier_gateway::metrics::{self, Protocol};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};
use tokio_util::io::poll_read_buf;

pub(crate) use check::Limits;
use check::{FrameCheck, Violation};

use crate::{error::Refusal, wire};

/// How long a refused client is given to read its CLOSE and hang up.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How much is read from the client at a time, beyond the rest of the frame being read.
const READ_AHEAD: usize = 8 * 1024;

/// A client's stream as fe2o3 reads it: frames checked, a bad one answered with CLOSE.
#[derive(Debug)]
pub(crate) struct FrameGuard<S> {
    inner: S,
    check: FrameCheck,
    limits: Limits,
    peer: SocketAddr,
    /// Read from the client, not yet a whole frame.
    unchecked: BytesMut,
    /// Checked (a frame, or the protocol header) and not yet handed to fe2o3.
    checked: BytesMut,
    /// Bytes of the client's protocol header still to hand on as they are (fe2o3 checks it).
    header_left: usize,
    /// Bytes fe2o3 has written: past its protocol header, it has sent its OPEN.
    written: usize,
    /// Set once a frame failed.
    refusing: Option<Refusing>,
}

/// A connection being closed for a frame that failed.
#[derive(Debug)]
struct Refusing {
    refusal: Refusal,
    /// The frames that say so, and how much of them is written.
    reply: Vec<u8>,
    sent: usize,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    Writing,
    Flushing,
    ShuttingDown,
    /// Reading and dropping what the client still sends, until it hangs up or the linger is over.
    Draining(Pin<Box<Sleep>>),
    Done,
}

impl<S> FrameGuard<S> {
    /// Guards `inner`, whose next bytes are the client's AMQP protocol header.
    pub(crate) fn new(inner: S, limits: Limits, peer: SocketAddr) -> Self {
        Self {
            inner,
            check: FrameCheck::new(limits),
            limits,
            peer,
            unchecked: BytesMut::new(),
            checked: BytesMut::new(),
            header_left: 8,
            written: 0,
            refusing: None,
        }
    }

    /// The next bytes fe2o3 may have: the rest of the protocol header, or a whole checked frame;
    /// `None` until enough has been read.
    fn next_checked(&mut self) -> Result<Option<BytesMut>, Violation> {
        if self.header_left > 0 {
            let n = self.header_left.min(self.unchecked.len());
            if n == 0 {
                return Ok(None);
            }
            self.header_left -= n;
            return Ok(Some(self.unchecked.split_to(n)));
        }
        let Some(prefix) = self.unchecked.get(..4) else {
            return Ok(None);
        };
        let size = self
            .check
            .frame_size([prefix[0], prefix[1], prefix[2], prefix[3]])?;
        if self.unchecked.len() < size {
            self.unchecked.reserve(size - self.unchecked.len());
            return Ok(None);
        }
        let frame = self.unchecked.split_to(size);
        self.check.check(&frame)?;
        Ok(Some(frame))
    }

    /// Starts answering a frame that failed.
    fn refuse(&mut self, violation: Violation) {
        let Violation { refusal, limit } = violation;
        tracing::info!(
            peer = %self.peer,
            condition = %refusal.condition_symbol(),
            reason = %refusal.description,
            "closing an AMQP connection for a frame it sent"
        );
        match limit {
            Some(limit) => metrics::limit_refused(Protocol::Amqp, limit),
            None => metrics::error(Protocol::Amqp, "invalid_request"),
        }
        let mut reply = Vec::new();
        // fe2o3 writes its protocol header before it reads anything, and its OPEN before it reads
        // a frame; a CLOSE must follow an OPEN.
        if self.written <= crate::transport::AMQP_HEADER.len() {
            reply.extend(wire::open(
                &wire::container_id(),
                self.limits.max_frame_size,
                self.limits.channel_max,
            ));
        }
        reply.extend(wire::close(
            refusal.condition.clone(),
            refusal.description.clone(),
        ));
        self.unchecked.clear();
        self.checked.clear();
        self.refusing = Some(Refusing {
            refusal,
            reply,
            sent: 0,
            stage: Stage::Writing,
        });
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FrameGuard<S> {
    /// Writes the CLOSE, lets the client read it, then fails fe2o3's read.
    fn poll_refusing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(refusing) = self.refusing.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            match &mut refusing.stage {
                Stage::Writing => {
                    while refusing.sent < refusing.reply.len() {
                        let n = ready!(
                            Pin::new(&mut self.inner)
                                .poll_write(cx, &refusing.reply[refusing.sent..])
                        )?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        refusing.sent += n;
                    }
                    refusing.stage = Stage::Flushing;
                }
                Stage::Flushing => {
                    ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                    refusing.stage = Stage::ShuttingDown;
                }
                Stage::ShuttingDown => {
                    // A client that already hung up cannot be shut down on; it has gone either way.
                    let _ = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
                    refusing.stage = Stage::Draining(Box::pin(tokio::time::sleep(CLOSE_LINGER)));
                }
                Stage::Draining(linger) => {
                    if linger.as_mut().poll(cx).is_ready() {
                        refusing.stage = Stage::Done;
                        continue;
                    }
                    self.unchecked.clear();
                    self.unchecked.reserve(READ_AHEAD);
                    match ready!(poll_read_buf(
                        Pin::new(&mut self.inner),
                        cx,
                        &mut self.unchecked
                    )) {
                        Ok(0) | Err(_) => refusing.stage = Stage::Done,
                        Ok(_) => {}
                    }
                }
                Stage::Done => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "closed with {}: {}",
                            refusing.refusal.condition_symbol(),
                            refusing.refusal.description
                        ),
                    )));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.refusing.is_some() {
                return this.poll_refusing(cx);
            }
            if !this.checked.is_empty() {
                let n = buf.remaining().min(this.checked.len());
                buf.put_slice(&this.checked[..n]);
                this.checked.advance(n);
                return Poll::Ready(Ok(()));
            }
            match this.next_checked() {
                Ok(Some(checked)) => {
                    this.checked = checked;
                    continue;
                }
                Ok(None) => {}
                Err(violation) => {
                    this.refuse(violation);
                    continue;
                }
            }
            this.unchecked.reserve(READ_AHEAD);
            // The end of the stream is passed on as it is: fe2o3 sees the client hang up (a
            // partial frame it never got is dropped).
            if ready!(poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.unchecked
            ))? == 0
            {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.refusing.is_some() {
            // Nothing may follow CLOSE; fe2o3 learns the connection is over from its next read.
            return Poll::Ready(Ok(buf.len()));
        }
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.written += written;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refusing.is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refusing.is_some() {
            // Shut down already, once the CLOSE was out.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;

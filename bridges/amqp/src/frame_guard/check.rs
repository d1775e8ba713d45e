//! One frame's checks, on its bytes, before fe2o3 decodes it: the framing (size, data offset, type),
//! the channel and link handle within what the gateway offered, and every value in it (the
//! performative, and a transfer's message across all its frames) within the nesting the gateway
//! decodes. A frame that fails says why as the condition and description of the CLOSE that ends
//! its connection.

use std::collections::HashMap;

use fe2o3_amqp::types::{
    definitions::{AmqpError, ConnectionError},
    performatives::{Performative, Transfer},
};

use crate::{
    config::Config,
    error::Refusal,
    nesting::{Fault, MAX_NESTING, Scanner},
    wire::FRAME_HEADER,
};

/// Before OPEN, frames may be at most this large (AMQP 1.0 §2.7.1, MIN-MAX-FRAME-SIZE).
const MIN_MAX_FRAME_SIZE: u32 = 512;

/// What a client's frames must keep within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest frame after OPEN (`max-frame-size` in the gateway's OPEN).
    pub(crate) max_frame_size: u32,
    /// Highest channel (`channel-max` in OPEN).
    pub(crate) channel_max: u16,
    /// Highest link handle in a session (`handle-max` in BEGIN).
    pub(crate) handle_max: u32,
    /// Deepest nesting of values.
    pub(crate) nesting: usize,
}

impl From<&Config> for Limits {
    fn from(config: &Config) -> Self {
        Self {
            max_frame_size: config.max_frame_size,
            channel_max: config.channel_max(),
            handle_max: config.handle_max(),
            nesting: MAX_NESTING,
        }
    }
}

/// A frame refused: why, and the limit it passed if it passed one of `[amqp]`'s (to count it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) refusal: Refusal,
    pub(crate) limit: Option<&'static str>,
}

impl Violation {
    fn framing(description: String) -> Self {
        Self {
            refusal: Refusal::new(ConnectionError::FramingError, description),
            limit: None,
        }
    }

    fn limit(limit: &'static str, description: String) -> Self {
        Self {
            refusal: Refusal::new(ConnectionError::FramingError, description),
            limit: Some(limit),
        }
    }

    fn undecodable(what: &str, fault: &Fault) -> Self {
        let description = match fault {
            Fault::TooDeep(limit) => format!(
                "{what} nests values deeper than {limit} levels, the most the gateway decodes"
            ),
            Fault::Malformed(why) => format!("{what} is not well-formed AMQP: {why}"),
        };
        Self {
            refusal: Refusal::new(AmqpError::DecodeError, description),
            limit: None,
        }
    }
}

/// The checks of one connection's frames, in order.
#[derive(Debug)]
pub(crate) struct FrameCheck {
    limits: Limits,
    /// The client's OPEN passed: frames may be as large as `max_frame_size`.
    opened: bool,
    /// Messages part-way through their transfers, by channel and link handle.
    deliveries: HashMap<(u16, u32), Delivery>,
}

/// A message arriving over several transfer frames: its payload scanned so far.
#[derive(Debug)]
struct Delivery {
    id: Option<u32>,
    payload: Scanner,
}

impl FrameCheck {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            opened: false,
            deliveries: HashMap::new(),
        }
    }

    /// The size a frame's first four bytes announce, if a frame may be that large now: checked
    /// before anything is read into memory for it.
    pub(crate) fn frame_size(&self, prefix: [u8; 4]) -> Result<usize, Violation> {
        let size = u32::from_be_bytes(prefix);
        let max = if self.opened {
            self.limits.max_frame_size
        } else {
            MIN_MAX_FRAME_SIZE
        };
        if (size as usize) < FRAME_HEADER {
            return Err(Violation::framing(format!(
                "a frame of {size} bytes, less than a frame header"
            )));
        }
        if size > max {
            let offered = if self.opened {
                "the max-frame-size the gateway offered in OPEN"
            } else {
                "the 512 bytes a frame may have before OPEN"
            };
            return Err(Violation::framing(format!(
                "a frame of {size} bytes, over {offered} ({max})"
            )));
        }
        // A u32 at most `max`, itself a u32.
        Ok(size as usize)
    }

    /// Checks one whole frame, its size field included (so at least a header long).
    pub(crate) fn check(&mut self, frame: &[u8]) -> Result<(), Violation> {
        let (doff, kind) = (frame[4], frame[5]);
        let channel = u16::from_be_bytes([frame[6], frame[7]]);
        let body_at = usize::from(doff) * 4;
        if doff < 2 || body_at > frame.len() {
            return Err(Violation::framing(format!(
                "a frame whose data offset {doff} is outside it"
            )));
        }
        if doff > 2 {
            return Err(Violation {
                refusal: Refusal::new(
                    AmqpError::NotImplemented,
                    "extended frame headers are not supported",
                ),
                limit: None,
            });
        }
        if kind != 0 {
            return Err(Violation::framing(format!(
                "a frame of type {kind} where AMQP frames (type 0) are expected"
            )));
        }
        let body = &frame[body_at..];
        // An empty frame only keeps the connection alive; its channel means nothing.
        if body.is_empty() {
            return Ok(());
        }
        if channel > self.limits.channel_max {
            return Err(Violation::limit(
                "max_sessions",
                format!(
                    "channel {channel} is beyond the channel-max of {} the gateway offered in OPEN",
                    self.limits.channel_max
                ),
            ));
        }
        let len = Scanner::first_value(body, self.limits.nesting)
            .map_err(|fault| Violation::undecodable("a performative", &fault))?;
        let performative: Performative =
            serde_amqp::from_slice(&body[..len]).map_err(|error| Violation {
                refusal: Refusal::new(
                    AmqpError::DecodeError,
                    format!("a frame that is not an AMQP performative: {error}"),
                ),
                limit: None,
            })?;
        match performative {
            Performative::Open(_) => self.opened = true,
            Performative::Attach(attach) => self.handle(attach.handle.0)?,
            Performative::Flow(flow) => {
                if let Some(handle) = flow.handle {
                    self.handle(handle.0)?;
                }
            }
            Performative::Transfer(transfer) => {
                self.handle(transfer.handle.0)?;
                self.payload(channel, &transfer, &body[len..])?;
            }
            Performative::Detach(detach) => {
                self.handle(detach.handle.0)?;
                self.deliveries.remove(&(channel, detach.handle.0));
            }
            Performative::End(_) => self.deliveries.retain(|(on, _), _| *on != channel),
            Performative::Begin(_) | Performative::Disposition(_) | Performative::Close(_) => {}
        }
        Ok(())
    }

    fn handle(&self, handle: u32) -> Result<(), Violation> {
        if handle > self.limits.handle_max {
            return Err(Violation::limit(
                "max_links_per_session",
                format!(
                    "link handle {handle} is beyond the handle-max of {} the gateway offered in BEGIN",
                    self.limits.handle_max
                ),
            ));
        }
        Ok(())
    }

    /// Scans a transfer's part of its message, going on from the delivery's earlier transfers.
    fn payload(
        &mut self,
        channel: u16,
        transfer: &Transfer,
        bytes: &[u8],
    ) -> Result<(), Violation> {
        let key = (channel, transfer.handle.0);
        if transfer.aborted {
            self.deliveries.remove(&key);
            return Ok(());
        }
        let continues = self.deliveries.get(&key).is_some_and(|delivery| {
            transfer.delivery_id.is_none() || transfer.delivery_id == delivery.id
        });
        if !continues {
            self.deliveries.insert(
                key,
                Delivery {
                    id: transfer.delivery_id,
                    payload: Scanner::new(self.limits.nesting),
                },
            );
        }
        if let Some(delivery) = self.deliveries.get_mut(&key) {
            delivery.payload.feed(bytes).map_err(|fault| {
                Violation::undecodable(
                    &format!("the message on link handle {}", transfer.handle.0),
                    &fault,
                )
            })?;
        }
        if !transfer.more {
            self.deliveries.remove(&key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

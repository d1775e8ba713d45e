//! What fe2o3's connection engine does with a client's bytes once Courier hands the stream over
//! (after SASL, or at once for a client that skips it): the protocol header, then frames. The
//! engine's transport splits the stream with a length-delimited codec (`length_delimited_decoder`,
//! private to fe2o3, rebuilt here with its settings) and decodes each frame with
//! `fe2o3_amqp::frames`: `amqp::FrameDecoder` after an AMQP header, `sasl::FrameCodec` after a SASL
//! one. A frame may be at most 512 bytes until OPEN has been read (AMQP's MIN-MAX-FRAME-SIZE, as
//! fe2o3 binds the transport), then the gateway's `max_frame_size`. An ATTACH's addresses go
//! through the gateway's address parsing; a delivery's transfers are joined and decoded as the
//! message its link would receive.

use bytes::{Bytes, BytesMut};
use courier_amqp::address;
use fe2o3_amqp::{
    frames::{amqp, sasl},
    transport::protocol_header::{ProtocolHeader, ProtocolId},
    types::{
        definitions::{MAJOR, MIN_MAX_FRAME_SIZE, MINOR, REVISION},
        messaging::TargetArchetype,
        performatives::Attach,
    },
};
use serde_amqp::read::IoReader;
use tokio_util::codec::{Decoder as _, LengthDelimitedCodec};

use crate::{known_bugs, message};

/// The gateway's default `amqp.max_frame_size`.
pub const MAX_FRAME_SIZE: usize = 64 * 1024;

/// Reads `bytes` as fe2o3's acceptor would: the protocol header, then frames until one does not
/// decode (the engine closes the connection there) or the bytes run out.
pub fn accept(bytes: &[u8]) {
    let Some((header, rest)) = bytes.split_first_chunk::<8>() else {
        return;
    };
    let Ok(header) = ProtocolHeader::try_from(*header) else {
        return;
    };
    if (header.major, header.minor, header.revision) != (MAJOR, MINOR, REVISION) {
        return;
    }
    match header.id {
        ProtocolId::Amqp => amqp_frames(rest),
        ProtocolId::Sasl => sasl_frames(rest),
        ProtocolId::Tls => {}
    }
}

/// fe2o3's transport codec, splitting frames by their size field (which counts itself).
fn length_delimited(max_frame_size: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_length(4)
        .max_frame_length(max_frame_size)
        .length_adjustment(-4)
        .new_codec()
}

/// The next frame in `buffer` as the engine's transport yields it: the bytes after its
/// size field; `None` once the bytes run out or a size is refused.
fn next_frame(codec: &mut LengthDelimitedCodec, buffer: &mut BytesMut) -> Option<BytesMut> {
    let frame = codec.decode(buffer).ok().flatten()?;
    // Known bugs (see `known_bugs`): the connection would end here, one way or another.
    let hits_known_bug = known_bugs::short_frame(&frame)
        || known_bugs::in_encoded(frame.get(4..).unwrap_or_default());
    (!hits_known_bug).then_some(frame)
}

fn amqp_frames(rest: &[u8]) {
    let mut buffer = BytesMut::from(rest);
    let mut codec = length_delimited(MIN_MAX_FRAME_SIZE);
    let mut opened = false;
    let mut delivery: Vec<Bytes> = Vec::new();
    while let Some(mut frame) = next_frame(&mut codec, &mut buffer) {
        let Ok(Some(frame)) = (amqp::FrameDecoder {}).decode(&mut frame) else {
            return;
        };
        match frame.body {
            amqp::FrameBody::Open(_) if !opened => {
                opened = true;
                codec = length_delimited(MAX_FRAME_SIZE);
            }
            amqp::FrameBody::Attach(attach) => addressed(&attach),
            amqp::FrameBody::Transfer {
                performative,
                payload,
            } => {
                delivery.push(payload);
                if !performative.more {
                    received(&std::mem::take(&mut delivery));
                }
            }
            _ => {}
        }
    }
}

/// What the gateway reads from an ATTACH before it opens the link (`courier_amqp::address`): the
/// target's address for a client's sender, the source's address and filters for a receiver.
/// Either may be refused; neither may panic.
fn addressed(attach: &Attach) {
    if let Some(target) = &attach.target {
        #[allow(unreachable_patterns)] // a coordinator, with fe2o3's `transaction` feature
        match target.as_ref() {
            TargetArchetype::Target(target) => {
                drop(address::destination(target.address.as_deref()))
            }
            _ => {}
        }
    }
    if let Some(source) = &attach.source {
        drop(address::origin(
            source.address.as_deref(),
            source.filter.as_ref(),
        ));
    }
}

/// A delivery's payload, from one transfer or several, decoded as its link would.
fn received(payloads: &[Bytes]) {
    match payloads {
        [one] => drop(message::decode(one)),
        several => {
            let joined = several.concat();
            // Known bugs (see `known_bugs`) in decoding the joined payload.
            if known_bugs::in_encoded(&joined) {
                return;
            }
            let reader = IoReader::new(joined.as_slice());
            drop(message::decode_from(reader));
        }
    }
}

fn sasl_frames(rest: &[u8]) {
    let mut buffer = BytesMut::from(rest);
    let mut codec = length_delimited(MIN_MAX_FRAME_SIZE);
    while let Some(mut frame) = next_frame(&mut codec, &mut buffer) {
        if !matches!((sasl::FrameCodec {}).decode(&mut frame), Ok(Some(_))) {
            return;
        }
    }
}

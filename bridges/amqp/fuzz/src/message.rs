//! A delivery's payload as the gateway decodes it: fe2o3's receiver turns the transfer payload into
//! `Message<Body<Value>>` (`courier_amqp::mapping::AmqpMessage`, what `inbound` receives) with
//! `DecodeIntoMessage`: from a slice for a one-frame delivery, from a reader over the frames' bytes
//! for one split across transfers.

use courier_amqp::mapping::AmqpMessage;
use fe2o3_amqp::types::{
    messaging::{Body, message::DecodeIntoMessage},
    primitives::Value,
};
use serde_amqp::read::{Read, SliceReader};

/// The message `payload` decodes to, as a sender link would receive it; `None` when it does not
/// decode (the link rejects such a delivery).
pub fn decode(payload: &[u8]) -> Option<AmqpMessage> {
    decode_from(SliceReader::new(payload))
}

/// As [`decode`], from any of serde_amqp's readers.
pub fn decode_from<'de>(reader: impl Read<'de>) -> Option<AmqpMessage> {
    <Body<Value> as DecodeIntoMessage>::decode_message_from_reader(reader).ok()
}

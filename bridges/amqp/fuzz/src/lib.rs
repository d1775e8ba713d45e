//! What the AMQP fuzz targets share: the receiving side of a gateway connection, step by step, over
//! bytes instead of a socket.
//!
//! - [`sasl`]: Courier's own SASL layer (`courier_amqp::sasl::negotiate`), as a client starting with
//!   the SASL protocol header meets it;
//! - [`engine`]: what fe2o3's connection engine then does with the stream: the protocol header, and
//!   length-delimited frames through its frame codecs, a delivery's transfers joined into a payload;
//! - [`message`]: a payload decoded as the message type the gateway's sender links receive;
//! - [`roundtrip`]: what the mapping from message to record and back promises;
//! - [`known_bugs`]: inputs that hit bugs already reported, skipped so fuzzing goes on past them.

pub mod engine;
pub mod known_bugs;
pub mod message;
pub mod roundtrip;
pub mod sasl;

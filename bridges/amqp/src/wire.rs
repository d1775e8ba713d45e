//! AMQP frames the gateway writes itself rather than through fe2o3: the OPEN and CLOSE that answer
//! a connection it will not serve ([`refusal`](crate::refusal)), or whose client broke the framing
//! ([`frame_guard`](crate::frame_guard)).

use fe2o3_amqp::types::{
    definitions::{self, ErrorCondition},
    performatives::{Close, Open, Performative},
};

/// An AMQP frame's header: size (4), data offset (1), type (1), channel (2).
pub(crate) const FRAME_HEADER: usize = 8;

/// An AMQP frame on channel 0 carrying `performative`: a connection's OPEN or CLOSE.
pub(crate) fn frame(performative: &Performative) -> Vec<u8> {
    // The gateway's own OPEN and CLOSE always encode: they hold strings, numbers and symbols.
    let body = serde_amqp::to_vec(performative).unwrap_or_default();
    let size = u32::try_from(FRAME_HEADER + body.len()).unwrap_or(u32::MAX);
    let mut bytes = Vec::with_capacity(FRAME_HEADER + body.len());
    bytes.extend_from_slice(&size.to_be_bytes());
    // Data offset 2 (in four-byte words: no extended header), frame type 0 (AMQP), channel 0.
    bytes.extend_from_slice(&[2, 0, 0, 0]);
    bytes.extend_from_slice(&body);
    bytes
}

/// The gateway's OPEN, as fe2o3's acceptor would send it.
pub(crate) fn open(container_id: &str, max_frame_size: u32, channel_max: u16) -> Vec<u8> {
    frame(&Performative::Open(Open {
        container_id: container_id.to_owned(),
        hostname: None,
        max_frame_size: max_frame_size.into(),
        channel_max: channel_max.into(),
        idle_time_out: None,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }))
}

/// A CLOSE saying why the connection ends.
pub(crate) fn close(condition: ErrorCondition, description: String) -> Vec<u8> {
    frame(&Performative::Close(Close::new(Some(
        definitions::Error::new(condition, Some(description), None),
    ))))
}

/// The gateway's container id, in its OPEN.
pub(crate) fn container_id() -> String {
    format!("courier-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::definitions::AmqpError;

    use super::*;

    #[test]
    fn a_close_frame_decodes_as_fe2o3_reads_frames() {
        let bytes = close(AmqpError::ResourceLimitExceeded.into(), "too many".into());
        assert_eq!(
            u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize,
            bytes.len()
        );
        let performative: Performative =
            serde_amqp::from_slice(&bytes[FRAME_HEADER..]).expect("a CLOSE");
        let Performative::Close(Close { error: Some(error) }) = performative else {
            panic!("{performative:?}");
        };
        assert_eq!(error.condition, AmqpError::ResourceLimitExceeded.into());
        assert_eq!(error.description.as_deref(), Some("too many"));
    }
}

//! AMQP frames written by hand, for clients a well-behaved library cannot play: the protocol
//! header, a frame around a body, the performatives that open a sender link, and a value nested
//! deeper than any decoder should follow. Shared by courier-amqp's tests and the workspace's abuse
//! suite (`tests/abuse.rs` includes this file).

use fe2o3_amqp::types::{
    definitions::{Handle, Role},
    messaging::{Target, TargetArchetype},
    performatives::{Attach, Begin, Open, Performative},
};

/// The plain AMQP protocol header.
pub const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";

/// An AMQP frame (type 0) on `channel` with this body.
pub fn frame(channel: u16, body: &[u8]) -> Vec<u8> {
    let mut frame = ((8 + body.len()) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[2, 0]);
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

pub fn open_performative() -> Performative {
    Performative::Open(Open {
        container_id: "raw".into(),
        hostname: None,
        max_frame_size: Default::default(),
        channel_max: Default::default(),
        idle_time_out: None,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
}

pub fn begin_performative() -> Performative {
    Performative::Begin(Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: 5000,
        outgoing_window: 5000,
        handle_max: Default::default(),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
}

/// The client's sender link (handle `handle`) to `topic`.
pub fn sender_attach(handle: u32, topic: &str) -> Performative {
    Performative::Attach(Attach {
        name: format!("raw-sender-{handle}"),
        handle: Handle(handle),
        role: Role::Sender,
        snd_settle_mode: Default::default(),
        rcv_settle_mode: Default::default(),
        source: Some(Default::default()),
        target: Some(Box::new(TargetArchetype::Target(Target {
            address: Some(topic.to_owned()),
            ..Default::default()
        }))),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: Some(0),
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
}

/// `depth` lists (list32), each holding the next, around a null. Written by hand, outermost first
/// (linear in `depth`): encoding (and dropping) such a value recurses as decoding does.
pub fn nested_lists(depth: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(9 * depth + 1);
    for level in (1..=depth).rev() {
        // The list at `level` holds the one below: 9 bytes a level, and the null's 1.
        let inner = 1 + 9 * (level - 1);
        bytes.push(0xd0);
        bytes.extend_from_slice(&((inner + 4) as u32).to_be_bytes());
        bytes.extend_from_slice(&1_u32.to_be_bytes());
    }
    bytes.push(0x40);
    bytes
}

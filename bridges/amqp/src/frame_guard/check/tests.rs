//! Frames built by hand, as a client could send them, and what the checks say of each.

use fe2o3_amqp::types::{
    definitions::{ErrorCondition, Handle, Role},
    performatives::{Attach, Flow, Transfer},
    primitives::{Binary, Value},
};

use super::*;

/// The frames courier-amqp's integration tests and the abuse suite write by hand.
#[allow(dead_code, unreachable_pub)]
#[path = "../../../tests/support/frames.rs"]
mod frames;

fn limits() -> Limits {
    Limits {
        max_frame_size: 1024 * 1024,
        channel_max: 3,
        handle_max: 7,
        nesting: MAX_NESTING,
    }
}

fn frame(channel: u16, performative: Performative, payload: &[u8]) -> Vec<u8> {
    let body = [
        serde_amqp::to_vec(&performative).expect("encodes"),
        payload.to_vec(),
    ]
    .concat();
    frames::frame(channel, &body)
}

fn attach(handle: u32) -> Performative {
    Performative::Attach(Attach {
        name: format!("link-{handle}"),
        handle: Handle(handle),
        role: Role::Sender,
        snd_settle_mode: Default::default(),
        rcv_settle_mode: Default::default(),
        source: None,
        target: None,
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: Some(0),
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
}

fn transfer(handle: u32, delivery_id: Option<u32>, more: bool) -> Performative {
    Performative::Transfer(Transfer {
        handle: Handle(handle),
        delivery_id,
        delivery_tag: delivery_id.map(|id| Binary::from(id.to_be_bytes().to_vec())),
        message_format: Some(0),
        settled: None,
        more,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    })
}

/// An opened connection's checks, with a session on channel 1.
fn opened() -> FrameCheck {
    let mut check = FrameCheck::new(limits());
    check
        .check(&frame(0, frames::open_performative(), &[]))
        .expect("OPEN passes");
    check
        .check(&frame(1, frames::begin_performative(), &[]))
        .expect("BEGIN passes");
    check
}

/// An amqp-value section holding `depth` nested lists.
fn deep_message(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x00, 0x53, 0x77];
    // Encoding (and dropping) a `Value` recurses too: past a depth a test thread's stack takes,
    // the nesting is built by hand.
    if depth <= 100 {
        let mut value = Value::Null;
        for _ in 0..depth {
            value = Value::List(vec![value]);
        }
        bytes.extend(serde_amqp::to_vec(&value).expect("encodes"));
        return bytes;
    }
    bytes.extend(frames::nested_lists(depth));
    bytes
}

fn condition(violation: &Violation) -> &ErrorCondition {
    &violation.refusal.condition
}

#[test]
fn frame_sizes_are_checked_before_anything_is_read() {
    let check = FrameCheck::new(limits());
    assert!(check.frame_size(8u32.to_be_bytes()).is_ok());
    assert_eq!(check.frame_size(512u32.to_be_bytes()), Ok(512));
    for size in [0u32, 7, 513, u32::MAX] {
        let violation = check.frame_size(size.to_be_bytes()).unwrap_err();
        assert_eq!(
            condition(&violation),
            &ConnectionError::FramingError.into(),
            "{size}"
        );
    }
    // After OPEN, up to the max-frame-size offered.
    let check = opened();
    assert_eq!(
        check.frame_size((1024u32 * 1024).to_be_bytes()),
        Ok(1024 * 1024)
    );
    let violation = check
        .frame_size((1024u32 * 1024 + 1).to_be_bytes())
        .unwrap_err();
    assert!(
        violation.refusal.description.contains("max-frame-size"),
        "{violation:?}"
    );
}

#[test]
fn headers_that_are_not_amqp_frames_are_framing_errors() {
    let mut check = opened();
    let mut bad_offset = frame(0, frames::begin_performative(), &[]);
    bad_offset[4] = 1;
    let mut sasl = frame(0, frames::begin_performative(), &[]);
    sasl[5] = 1;
    for frame in [bad_offset, sasl] {
        let violation = check.check(&frame).unwrap_err();
        assert_eq!(condition(&violation), &ConnectionError::FramingError.into());
    }
    let mut extended = frame(0, frames::begin_performative(), &[0; 4]);
    extended[4] = 3;
    let violation = check.check(&extended).unwrap_err();
    assert_eq!(condition(&violation), &AmqpError::NotImplemented.into());
    // An empty frame keeps the connection alive, on any channel.
    assert_eq!(check.check(&frames::frame(9, &[])), Ok(()));
}

#[test]
fn channels_and_handles_past_what_was_offered_are_framing_errors_counted_as_limits() {
    let mut check = opened();
    assert_eq!(
        check.check(&frame(3, frames::begin_performative(), &[])),
        Ok(())
    );
    let violation = check
        .check(&frame(4, frames::begin_performative(), &[]))
        .unwrap_err();
    assert_eq!(condition(&violation), &ConnectionError::FramingError.into());
    assert_eq!(violation.limit, Some("max_sessions"));

    assert_eq!(check.check(&frame(1, attach(7), &[])), Ok(()));
    let violation = check.check(&frame(1, attach(8), &[])).unwrap_err();
    assert_eq!(condition(&violation), &ConnectionError::FramingError.into());
    assert_eq!(violation.limit, Some("max_links_per_session"));
    let flow = Performative::Flow(Flow {
        next_incoming_id: Some(0),
        incoming_window: 10,
        next_outgoing_id: 0,
        outgoing_window: 10,
        handle: Some(Handle(100)),
        delivery_count: None,
        link_credit: Some(10),
        available: None,
        drain: false,
        echo: false,
        properties: None,
    });
    assert_eq!(
        check.check(&frame(1, flow, &[])).unwrap_err().limit,
        Some("max_links_per_session")
    );
}

#[test]
fn a_performative_nested_too_deep_or_garbled_is_a_decode_error() {
    let mut check = opened();
    // An ATTACH whose properties hold a value nested 100,000 deep: the map and the frame are
    // well within max-frame-size.
    let encoded = serde_amqp::to_vec(&attach(1)).expect("encodes");
    // 0x00 0x53 0x12 (described, ATTACH's code), then list8: size, count, the fields.
    assert_eq!(encoded[3], 0xc0, "a small ATTACH is a list8");
    let count = usize::from(encoded[5]);
    let mut fields = encoded[6..].to_vec();
    // Nulls up to `properties`, the fourteenth field, and there the deep value.
    fields.extend(std::iter::repeat_n(0x40, 13 - count));
    fields.extend_from_slice(&deep_message(100_000)[3..]);
    let mut body = vec![0x00, 0x53, 0x12, 0xd0];
    body.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    body.extend_from_slice(&14u32.to_be_bytes());
    body.extend(fields);
    let violation = check.check(&frames::frame(1, &body)).unwrap_err();
    assert_eq!(condition(&violation), &AmqpError::DecodeError.into());
    assert!(
        violation.refusal.description.contains("deeper than 64"),
        "{violation:?}"
    );

    for garbage in [
        &[0xa1, 0x03, b'a', b'b', b'c'][..],
        &[0x00, 0x53, 0x99, 0x45],
        &[0x01],
    ] {
        let violation = check.check(&frames::frame(1, garbage)).unwrap_err();
        assert_eq!(
            condition(&violation),
            &AmqpError::DecodeError.into(),
            "{garbage:?}"
        );
    }
}

#[test]
fn a_message_is_scanned_across_its_transfers_and_one_nested_too_deep_refused() {
    let mut check = opened();
    check
        .check(&frame(1, attach(2), &[]))
        .expect("ATTACH passes");
    // A message of 64 levels passes, split over three transfers (then another one, whole).
    let fine = deep_message(MAX_NESTING - 1);
    let third = fine.len() / 3;
    assert_eq!(
        check.check(&frame(1, transfer(2, Some(0), true), &fine[..third])),
        Ok(())
    );
    assert_eq!(
        check.check(&frame(1, transfer(2, None, true), &fine[third..2 * third])),
        Ok(())
    );
    assert_eq!(
        check.check(&frame(1, transfer(2, None, false), &fine[2 * third..])),
        Ok(())
    );
    assert_eq!(
        check.check(&frame(1, transfer(2, Some(1), false), &fine)),
        Ok(())
    );

    // An aborted delivery is forgotten: the next one starts afresh.
    let deep = deep_message(100_000);
    assert_eq!(
        check.check(&frame(1, transfer(2, Some(2), true), &deep[..30])),
        Ok(())
    );
    let mut aborted = transfer(2, None, false);
    if let Performative::Transfer(transfer) = &mut aborted {
        transfer.aborted = true;
    }
    assert_eq!(check.check(&frame(1, aborted, &[])), Ok(()));
    assert_eq!(
        check.check(&frame(1, transfer(2, Some(3), false), &fine)),
        Ok(())
    );

    // 100,000 levels over transfers of 4 KiB: refused on the transfer that passes 64.
    let mut refused = None;
    for (i, piece) in deep.chunks(4096).enumerate() {
        let id = (i == 0).then_some(4);
        if let Err(violation) = check.check(&frame(1, transfer(2, id, true), piece)) {
            refused = Some((i, violation));
            break;
        }
    }
    let (at, violation) = refused.expect("refused");
    assert_eq!(at, 0, "64 levels of list32 fit in the first 4 KiB");
    assert_eq!(condition(&violation), &AmqpError::DecodeError.into());
    assert!(
        violation.refusal.description.contains("link handle 2"),
        "{violation:?}"
    );
}

//! Frames no client library sends, written by hand to a gateway served in process: values nested
//! past what the gateway decodes (in a message, and in a performative), garbage, oversized frames,
//! channels and link handles past what the gateway offered. Each closes its own connection with
//! the spec's condition in CLOSE (and the gateway does not fall over: a stack overflow would abort
//! this test binary); a good client on another connection carries on. And a client that answers
//! the DETACH of a link the gateway refused late, or attaches again without answering it.

mod support;

use courier_amqp::Config;
use fe2o3_amqp::types::{
    definitions::{AmqpError, ConnectionError, Handle},
    messaging::DeliveryState,
    performatives::{Detach, End, Performative, Transfer},
    primitives::Binary,
};
use support::*;

fn transfer(delivery_id: Option<u32>, more: bool) -> Performative {
    Performative::Transfer(Transfer {
        handle: Handle(0),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nested_past_the_limit_closes_only_its_connection() -> TestResult {
    let gateway = Gateway::start(Config::default()).await?;
    let (mut raw, _) = Raw::sender(gateway.address, "nested").await?;
    // An amqp-value section holding 100,000 nested lists: 900 KB, within max-message-size, sent
    // over transfers that each fit max-frame-size. The gateway may close before the last.
    let message = [vec![0x00, 0x53, 0x77], nested_lists(100_000)].concat();
    let pieces: Vec<&[u8]> = message.chunks(60_000).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let more = i + 1 < pieces.len();
        if raw
            .send(0, &transfer((i == 0).then_some(0), more), piece)
            .await
            .is_err()
        {
            break;
        }
    }
    let error = raw.closed_with().await?;
    assert_eq!(error.condition, AmqpError::DecodeError.into());
    let description = error.description.unwrap_or_default();
    assert!(description.contains("deeper than 64"), "{description}");
    assert!(gateway.records("nested").await?.is_empty());

    a_good_client_works(&gateway, "after-nested", 3).await?;
    gateway.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_performative_nested_past_the_limit_closes_its_connection() -> TestResult {
    // Frames as large as a megabyte, so a performative can nest 100,000 deep.
    let gateway = Gateway::start(Config {
        max_frame_size: 1 << 20,
        ..Config::default()
    })
    .await?;
    let (mut raw, _) = Raw::open(gateway.address).await?;
    // A BEGIN whose properties (its eighth field) hold the nesting.
    let mut fields = vec![
        0x40, 0x43, 0x70, 0, 0, 0, 10, 0x70, 0, 0, 0, 10, 0x40, 0x40, 0x40,
    ];
    fields.extend(nested_lists(100_000));
    let mut body = vec![0x00, 0x53, 0x11, 0xd0];
    body.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    body.extend_from_slice(&8u32.to_be_bytes());
    body.extend(fields);
    raw.send_frame(0, &body).await?;
    let error = raw.closed_with().await?;
    assert_eq!(error.condition, AmqpError::DecodeError.into());
    assert!(
        error
            .description
            .unwrap_or_default()
            .contains("deeper than 64"),
        "a performative nested too deep"
    );

    a_good_client_works(&gateway, "after-deep-begin", 1).await?;
    gateway.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_close_their_connection_with_the_specs_condition()
-> TestResult {
    let gateway = Gateway::start(Config::default()).await?;

    // Garbage after the protocol header, before any OPEN: the gateway opens, to close.
    let mut raw = Raw::connect(gateway.address).await?;
    let garbage: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(97) | 0x80).collect();
    raw.stream
        .write_all(&[&AMQP_HEADER[..], &garbage].concat())
        .await?;
    let mut header = [0u8; 8];
    raw.stream.read_exact(&mut header).await?;
    let error = raw.closed_with().await?;
    assert_eq!(error.condition, ConnectionError::FramingError.into());

    // After OPEN: a frame whose body is not a performative, a frame over max-frame-size (refused
    // from its size alone), a SASL frame.
    let cases: [(&str, Vec<u8>, _); 3] = [
        (
            "garbage body",
            frame(0, 0, &[0xa1, 0x03, b'a', b'b', b'c']),
            AmqpError::DecodeError.into(),
        ),
        (
            "oversized",
            {
                let mut header = (64 * 1024 + 1u32).to_be_bytes().to_vec();
                header.extend_from_slice(&[2, 0, 0, 0]);
                header
            },
            ConnectionError::FramingError.into(),
        ),
        (
            "SASL frame type",
            frame(0, 1, &[0x40]),
            ConnectionError::FramingError.into(),
        ),
    ];
    for (what, bytes, condition) in cases {
        let (mut raw, _) = Raw::open(gateway.address).await?;
        raw.stream.write_all(&bytes).await?;
        let error = raw.closed_with().await?;
        let expected: fe2o3_amqp::types::definitions::ErrorCondition = condition;
        assert_eq!(error.condition, expected, "{what}: {error:?}");
    }

    a_good_client_works(&gateway, "after-garbage", 1).await?;
    gateway.stop().await
}

/// A frame of type `kind` on `channel` with this body.
fn frame(channel: u16, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = ((8 + body.len()) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[2, kind]);
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_links_past_what_was_offered_are_framing_errors() -> TestResult {
    let gateway = Gateway::start(Config {
        max_sessions: 2,
        max_links_per_session: 2,
        ..Config::default()
    })
    .await?;

    let (mut raw, open) = Raw::open(gateway.address).await?;
    assert_eq!(open.channel_max.0, 1, "channel-max offered");
    for channel in [0, 1] {
        raw.send(channel, &begin_performative(), &[]).await?;
        match raw.next().await? {
            Some((_, Performative::Begin(begin), _)) => {
                assert_eq!(begin.handle_max.0, 1, "handle-max offered")
            }
            other => return Err(format!("expected BEGIN, got {other:?}").into()),
        }
    }
    raw.send(2, &begin_performative(), &[]).await?;
    let error = raw.closed_with().await?;
    assert_eq!(error.condition, ConnectionError::FramingError.into());
    assert!(error.description.unwrap_or_default().contains("channel 2"));

    let (mut raw, _) = Raw::open(gateway.address).await?;
    raw.send(0, &begin_performative(), &[]).await?;
    assert!(matches!(
        raw.next().await?,
        Some((_, Performative::Begin(_), _))
    ));
    raw.send(0, &sender_attach(2, "capped"), &[]).await?;
    let error = raw.closed_with().await?;
    assert_eq!(error.condition, ConnectionError::FramingError.into());
    assert!(error.description.unwrap_or_default().contains("handle 2"));

    a_good_client_works(&gateway, "after-caps", 1).await?;
    gateway.stop().await
}

/// A session on a raw connection with a link (handle 0) the gateway refused: the gateway's channel
/// of the session, once the refusal's DETACH (`amqp:invalid-field`) is in.
async fn a_refused_link(raw: &mut Raw) -> Result<u16, Error> {
    raw.send(0, &begin_performative(), &[]).await?;
    let theirs = match raw.next().await? {
        Some((channel, Performative::Begin(_), _)) => channel,
        other => return Err(format!("expected BEGIN, got {other:?}").into()),
    };
    raw.send(0, &sender_attach(0, "orders/partitions/x"), &[])
        .await?;
    loop {
        match raw.next().await? {
            Some((channel, Performative::Detach(detach), _)) if channel == theirs => {
                assert!(detach.closed, "{detach:?}");
                let error = detach.error.ok_or("DETACH without an error")?;
                assert_eq!(error.condition, AmqpError::InvalidField.into());
                return Ok(theirs);
            }
            Some((channel, Performative::Attach(_) | Performative::Flow(_), _))
                if channel == theirs => {}
            other => return Err(format!("expected ATTACH, FLOW, DETACH, got {other:?}").into()),
        }
    }
}

/// The client's DETACH (closing) of its link `handle`.
fn detach(handle: u32) -> Performative {
    Performative::Detach(Detach {
        handle: Handle(handle),
        closed: true,
        error: None,
    })
}

/// Attaches a sender link (`handle`, on our channel `ours`; the gateway's frames of the session
/// come on `theirs`) to `topic` and sends it one message: the gateway's handle of the link, once
/// the message is accepted.
async fn a_message_over_a_new_link(
    raw: &mut Raw,
    (ours, theirs): (u16, u16),
    handle: u32,
    topic: &str,
) -> Result<u32, Error> {
    raw.send(ours, &sender_attach(handle, topic), &[]).await?;
    let mut attached = None;
    let gateways_handle = loop {
        match (raw.next().await?, attached) {
            (Some((channel, Performative::Attach(attach), _)), None) if channel == theirs => {
                assert_eq!(attach.name, format!("raw-sender-{handle}"));
                assert!(attach.target.is_some(), "{attach:?}");
                attached = Some(attach.handle.0);
            }
            (Some((channel, Performative::Flow(flow), _)), Some(ours))
                if channel == theirs && flow.handle.as_ref().map(|h| h.0) == Some(ours) =>
            {
                if flow.link_credit.unwrap_or(0) > 0 {
                    break ours;
                }
            }
            (Some((channel, Performative::Flow(_), _)), _) if channel == theirs => {}
            other => {
                return Err(format!("expected the link's ATTACH and FLOW, got {other:?}").into());
            }
        }
    };
    let mut transfer = transfer(Some(0), false);
    if let Performative::Transfer(transfer) = &mut transfer {
        transfer.handle = Handle(handle);
    }
    // An amqp-value section holding the string "hello".
    let message = [&[0x00, 0x53, 0x77, 0xa1, 5][..], b"hello"].concat();
    raw.send(ours, &transfer, &message).await?;
    loop {
        match raw.next().await? {
            Some((channel, Performative::Disposition(disposition), _)) if channel == theirs => {
                assert!(
                    matches!(disposition.state, Some(DeliveryState::Accepted(_))),
                    "{disposition:?}"
                );
                return Ok(gateways_handle);
            }
            Some((channel, Performative::Flow(_), _)) if channel == theirs => {}
            other => return Err(format!("expected DISPOSITION, got {other:?}").into()),
        }
    }
}

/// A refused link's DETACH may be answered late (a client whose event loop runs only inside its
/// calls does): the session's next link, attached after the answer, is served at once, and its
/// own DETACH is answered (fe2o3 files a DETACH awaiting its answer by the handle the next link
/// takes; answered first, nothing is mistaken).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_links_detach_answered_late_costs_nothing() -> TestResult {
    let gateway = Gateway::start(Config::default()).await?;
    let (mut raw, _) = Raw::open(gateway.address).await?;
    let theirs = a_refused_link(&mut raw).await?;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    raw.send(0, &detach(0), &[]).await?;

    let handle = a_message_over_a_new_link(&mut raw, (0, theirs), 1, "after-refusal").await?;
    assert_eq!(gateway.records("after-refusal").await?.len(), 1);
    raw.send(0, &detach(1), &[]).await?;
    loop {
        match raw.next().await? {
            Some((channel, Performative::Detach(answer), _)) if channel == theirs => {
                assert_eq!(answer.handle.0, handle, "{answer:?}");
                assert!(answer.closed && answer.error.is_none(), "{answer:?}");
                break;
            }
            Some((channel, Performative::Flow(_) | Performative::Disposition(_), _))
                if channel == theirs => {}
            other => return Err(format!("expected the link's DETACH, got {other:?}").into()),
        }
    }
    drop(raw);
    gateway.stop().await
}

/// A client that attaches again without answering a refused link's DETACH waits a few seconds at
/// most: its session then ends, saying why (its next link's DETACH would otherwise be taken for
/// the answer), and the connection's next session works. Nothing else waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attaching_past_an_unanswered_refusal_ends_that_session_only() -> TestResult {
    let gateway = Gateway::start(Config::default()).await?;
    let (mut raw, _) = Raw::open(gateway.address).await?;
    let theirs = a_refused_link(&mut raw).await?;
    a_good_client_works(&gateway, "meanwhile", 1).await?;
    raw.send(0, &sender_attach(1, "after-refusal"), &[]).await?;
    match raw.next().await? {
        Some((channel, Performative::End(end), _)) if channel == theirs => {
            let error = end.error.ok_or("END without an error")?;
            assert_eq!(error.condition, AmqpError::NotAllowed.into());
            let description = error.description.unwrap_or_default();
            assert!(description.contains("raw-sender-1"), "{description}");
        }
        other => return Err(format!("expected END, got {other:?}").into()),
    }
    raw.send(0, &Performative::End(End { error: None }), &[])
        .await?;

    // The connection's next session (our channel 1) takes a link and a message.
    raw.send(1, &begin_performative(), &[]).await?;
    let next = match raw.next().await? {
        Some((channel, Performative::Begin(begin), _)) if begin.remote_channel == Some(1) => {
            channel
        }
        other => return Err(format!("expected BEGIN, got {other:?}").into()),
    };
    a_message_over_a_new_link(&mut raw, (1, next), 0, "after-refusal").await?;
    assert_eq!(gateway.records("after-refusal").await?.len(), 1);
    drop(raw);
    gateway.stop().await
}

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

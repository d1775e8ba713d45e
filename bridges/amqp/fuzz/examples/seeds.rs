//! Writes the seed corpora of the `frames` and `mapping` targets (`corpus/<target>/`) with
//! fe2o3's own types and encoders: what real clients send (the protocol header, SASL PLAIN,
//! ANONYMOUS and EXTERNAL, OPEN, BEGIN, ATTACH of senders and receivers, FLOW, TRANSFER, a
//! delivery split across transfers, DISPOSITION, DETACH, END, CLOSE, heartbeats) and messages of
//! every body and property kind the mapping knows. Run from this directory (not under cargo fuzz):
//! `cargo run --example seeds`.

use std::{fs, path::Path};

use bytes::BytesMut;
use fe2o3_amqp::{
    frames::sasl::{Frame as SaslFrame, FrameCodec},
    types::{
        definitions::{DeliveryTag, Handle, ReceiverSettleMode, Role, SenderSettleMode},
        messaging::{
            Accepted, AmqpSequence, AmqpValue, ApplicationProperties, Batch, Body, Data,
            DeliveryState, Header, Message, MessageAnnotations, MessageId, Modified, Properties,
            Rejected, Released, Source, Target, TargetArchetype, message::__private::Serializable,
        },
        performatives::{
            Attach, Begin, ChannelMax, Close, Detach, Disposition, End, Flow, MaxFrameSize, Open,
            Performative, Transfer,
        },
        primitives::{Binary, OrderedMap, SimpleValue, Symbol, Timestamp, Value},
        sasl::SaslInit,
    },
};
use tokio_util::codec::Encoder as _;

type AmqpMessage = Message<Body<Value>>;

fn main() {
    for target in ["frames", "mapping"] {
        let directory = Path::new("corpus").join(target);
        if directory.exists() {
            fs::remove_dir_all(&directory).expect("remove the old seeds");
        }
        fs::create_dir_all(&directory).expect("a corpus directory");
    }
    let messages = messages();
    for (name, message) in &messages {
        fs::write(Path::new("corpus/mapping").join(name), encode(message)).expect("a seed");
    }
    let connections = connections(&messages);
    for (name, bytes) in &connections {
        fs::write(Path::new("corpus/frames").join(name), bytes).expect("a seed");
    }
    println!(
        "wrote {} connections and {} messages",
        connections.len(),
        messages.len()
    );
}

// ---- Connections ----

const AMQP_HEADER: &[u8] = b"AMQP\x00\x01\x00\x00";
const SASL_HEADER: &[u8] = b"AMQP\x03\x01\x00\x00";

fn connections(messages: &[(&'static str, AmqpMessage)]) -> Vec<(&'static str, Vec<u8>)> {
    let payload = |name: &str| {
        encode(
            &messages
                .iter()
                .find(|(seed, _)| *seed == name)
                .expect("a message seed")
                .1,
        )
    };
    let producer = |settled: bool| {
        let mut bytes = opening();
        bytes.extend(amqp(1, Performative::Attach(sender_attach("orders"))));
        bytes.extend(transfer(0, &payload("string-with-key"), settled, false));
        bytes.extend(transfer(
            1,
            &payload("data-with-properties"),
            settled,
            false,
        ));
        bytes.extend(closing());
        bytes
    };
    vec![
        (
            "amqp-produce",
            [AMQP_HEADER.to_vec(), producer(false)].concat(),
        ),
        (
            "amqp-produce-presettled",
            [AMQP_HEADER.to_vec(), producer(true)].concat(),
        ),
        (
            "sasl-anonymous-produce",
            [
                sasl("ANONYMOUS", None),
                AMQP_HEADER.to_vec(),
                producer(false),
            ]
            .concat(),
        ),
        (
            "sasl-external-consume",
            [
                sasl("EXTERNAL", Some(b"fuzz-client")),
                AMQP_HEADER.to_vec(),
                consumer(),
            ]
            .concat(),
        ),
        (
            "sasl-anonymous-consume",
            [
                sasl("ANONYMOUS", Some(b"trace")),
                AMQP_HEADER.to_vec(),
                consumer(),
            ]
            .concat(),
        ),
        (
            "sasl-plain-refused",
            [
                sasl("PLAIN", Some(b"\0alice\0s3cret")),
                AMQP_HEADER.to_vec(),
                producer(false),
            ]
            .concat(),
        ),
        (
            "sasl-plain-jwt",
            sasl("PLAIN", Some(b"\0\0eyJhbGciOi.e30.sig")),
        ),
        ("sasl-unknown-mechanism", sasl("SCRAM-SHA-256", None)),
        ("sasl-header-only", SASL_HEADER.to_vec()),
        (
            "sasl-response-instead-of-init",
            [
                SASL_HEADER.to_vec(),
                sasl_frame(SaslFrame::Response(fe2o3_amqp::types::sasl::SaslResponse {
                    response: Binary::from(b"x".to_vec()),
                })),
            ]
            .concat(),
        ),
        ("tls-header", b"AMQP\x02\x01\x00\x00".to_vec()),
        ("amqp-wrong-version", b"AMQP\x00\x01\x01\x00".to_vec()),
        (
            "amqp-delivery-across-transfers",
            [AMQP_HEADER.to_vec(), split_delivery(&payload("sequence"))].concat(),
        ),
        (
            "amqp-addresses",
            [AMQP_HEADER.to_vec(), {
                let mut bytes = opening();
                for (handle, address) in ["orders/partitions/2", "orders/partitions/x", "a/b/c", ""]
                    .into_iter()
                    .enumerate()
                {
                    let mut attach = sender_attach(address);
                    attach.handle = Handle(handle as u32);
                    bytes.extend(amqp(1, Performative::Attach(attach)));
                }
                bytes
            }]
            .concat(),
        ),
        (
            "amqp-heartbeats-and-close",
            [
                AMQP_HEADER.to_vec(),
                amqp(0, Performative::Open(open())),
                empty_frame(),
                empty_frame(),
                amqp(0, Performative::Close(Close { error: None })),
            ]
            .concat(),
        ),
    ]
}

/// OPEN, then BEGIN on channel 1.
fn opening() -> Vec<u8> {
    [
        amqp(0, Performative::Open(open())),
        amqp(
            1,
            Performative::Begin(Begin {
                remote_channel: None,
                next_outgoing_id: 0,
                incoming_window: 2048,
                outgoing_window: 2048,
                handle_max: Handle(255),
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            }),
        ),
    ]
    .concat()
}

/// DETACH of handle 0, END, CLOSE.
fn closing() -> Vec<u8> {
    [
        amqp(
            1,
            Performative::Detach(Detach {
                handle: Handle(0),
                closed: true,
                error: None,
            }),
        ),
        amqp(1, Performative::End(End { error: None })),
        amqp(0, Performative::Close(Close { error: None })),
    ]
    .concat()
}

fn open() -> Open {
    let mut properties = OrderedMap::new();
    properties.insert(Symbol::from("product"), Value::String("seed".into()));
    Open {
        container_id: "fuzz-client".into(),
        hostname: Some("localhost".into()),
        max_frame_size: MaxFrameSize(65536),
        channel_max: ChannelMax(255),
        idle_time_out: Some(30_000),
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: Some(properties),
    }
}

fn sender_attach(address: &str) -> Attach {
    Attach {
        name: format!("sender-{address}"),
        handle: Handle(0),
        role: Role::Sender,
        snd_settle_mode: SenderSettleMode::Unsettled,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(Source::builder().address("client").build())),
        target: Some(Box::new(TargetArchetype::Target(
            Target::builder().address(address).build(),
        ))),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: Some(0),
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

/// A receiver of a consumer group from offset 0: ATTACH with filters, FLOW with credit, a
/// DISPOSITION of each outcome, DETACH.
fn consumer() -> Vec<u8> {
    let mut filters = OrderedMap::new();
    filters.insert(
        Symbol::from("courier:group"),
        Value::String("billing".into()),
    );
    filters.insert(
        Symbol::from("courier:start"),
        Value::String("offset:0".into()),
    );
    let attach = Attach {
        name: "receiver".into(),
        handle: Handle(0),
        role: Role::Receiver,
        snd_settle_mode: SenderSettleMode::Unsettled,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(
            Source::builder().address("orders").filter(filters).build(),
        )),
        target: Some(Box::new(TargetArchetype::Target(
            Target::builder().address("client").build(),
        ))),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: None,
        max_message_size: Some(1 << 20),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    let flow = Flow {
        next_incoming_id: Some(0),
        incoming_window: 2048,
        next_outgoing_id: 0,
        outgoing_window: 2048,
        handle: Some(Handle(0)),
        delivery_count: Some(0),
        link_credit: Some(10),
        available: None,
        drain: false,
        echo: false,
        properties: None,
    };
    let outcomes: [DeliveryState; 4] = [
        Accepted {}.into(),
        Released {}.into(),
        Modified {
            delivery_failed: Some(true),
            undeliverable_here: None,
            message_annotations: None,
        }
        .into(),
        Rejected { error: None }.into(),
    ];
    let mut bytes = opening();
    bytes.extend(amqp(1, Performative::Attach(attach)));
    bytes.extend(amqp(1, Performative::Flow(flow)));
    for (id, state) in outcomes.into_iter().enumerate() {
        bytes.extend(amqp(
            1,
            Performative::Disposition(Disposition {
                role: Role::Receiver,
                first: id as u32,
                last: None,
                settled: true,
                state: Some(state),
                batchable: false,
            }),
        ));
    }
    bytes.extend(closing());
    bytes
}

/// A sender link, then a delivery of `payload` split across three transfers.
fn split_delivery(payload: &[u8]) -> Vec<u8> {
    let mut bytes = opening();
    bytes.extend(amqp(1, Performative::Attach(sender_attach("orders"))));
    let third = payload.len().div_ceil(3);
    let parts: Vec<&[u8]> = payload.chunks(third.max(1)).collect();
    for (index, part) in parts.iter().enumerate() {
        let mut frame = transfer_performative(0, false);
        frame.more = index + 1 < parts.len();
        if index > 0 {
            frame.delivery_id = None;
            frame.delivery_tag = None;
        }
        bytes.extend(amqp_with_payload(1, Performative::Transfer(frame), part));
    }
    bytes.extend(closing());
    bytes
}

fn transfer_performative(id: u32, settled: bool) -> Transfer {
    Transfer {
        handle: Handle(0),
        delivery_id: Some(id),
        delivery_tag: Some(DeliveryTag::from(id.to_be_bytes().to_vec())),
        message_format: Some(0),
        settled: Some(settled),
        more: false,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    }
}

fn transfer(id: u32, payload: &[u8], settled: bool, more: bool) -> Vec<u8> {
    let mut performative = transfer_performative(id, settled);
    performative.more = more;
    amqp_with_payload(1, Performative::Transfer(performative), payload)
}

/// An AMQP frame: size, data offset 2, type 0, channel, the performative.
fn amqp(channel: u16, performative: Performative) -> Vec<u8> {
    amqp_with_payload(channel, performative, &[])
}

fn amqp_with_payload(channel: u16, performative: Performative, payload: &[u8]) -> Vec<u8> {
    let body = serde_amqp::to_vec(&performative).expect("a performative encodes");
    let mut frame = Vec::new();
    frame.extend_from_slice(&(8 + body.len() as u32 + payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&[0x02, 0x00]);
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&body);
    frame.extend_from_slice(payload);
    frame
}

/// A frame of no performative (a heartbeat).
fn empty_frame() -> Vec<u8> {
    vec![0, 0, 0, 8, 0x02, 0x00, 0, 0]
}

/// The SASL header and a sasl-init for `mechanism`.
fn sasl(mechanism: &str, response: Option<&[u8]>) -> Vec<u8> {
    let init = SaslInit {
        mechanism: Symbol::from(mechanism),
        initial_response: response.map(|bytes| Binary::from(bytes.to_vec())),
        hostname: Some("localhost".into()),
    };
    [SASL_HEADER.to_vec(), sasl_frame(SaslFrame::Init(init))].concat()
}

fn sasl_frame(frame: SaslFrame) -> Vec<u8> {
    let mut body = BytesMut::new();
    FrameCodec {}
        .encode(frame, &mut body)
        .expect("a SASL frame encodes");
    [
        (body.len() as u32 + 4).to_be_bytes().to_vec(),
        body.to_vec(),
    ]
    .concat()
}

// ---- Messages ----

fn encode(message: &AmqpMessage) -> Vec<u8> {
    serde_amqp::to_vec(&Serializable(message)).expect("a message encodes")
}

fn message(body: Body<Value>) -> AmqpMessage {
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: None,
        application_properties: None,
        body,
        footer: None,
    }
}

fn annotated(key: Value, body: Body<Value>) -> AmqpMessage {
    AmqpMessage {
        message_annotations: Some(
            MessageAnnotations::builder()
                .insert(Symbol::from("x-opt-partition-key"), key)
                .build(),
        ),
        ..message(body)
    }
}

fn text(text: &str) -> Body<Value> {
    Body::Value(AmqpValue(Value::String(text.into())))
}

fn messages() -> Vec<(&'static str, AmqpMessage)> {
    let mut every_property = OrderedMap::new();
    for (name, value) in [
        ("string", SimpleValue::String("red".into())),
        ("symbol", SimpleValue::Symbol(Symbol::from("s"))),
        ("binary", SimpleValue::Binary(Binary::from(vec![0, 255]))),
        ("null", SimpleValue::Null),
        ("bool", SimpleValue::Bool(true)),
        ("long", SimpleValue::Long(-7)),
        ("uint", SimpleValue::Uint(7)),
        ("double", SimpleValue::Double(1.5.into())),
        (
            "timestamp",
            SimpleValue::Timestamp(Timestamp::from_milliseconds(1)),
        ),
        ("char", SimpleValue::Char('é')),
    ] {
        every_property.insert(name.to_owned(), value);
    }
    let mut reserved = OrderedMap::new();
    reserved.insert("courier-id".to_owned(), SimpleValue::String("x".into()));
    let mut nested = OrderedMap::new();
    nested.insert(
        Value::Symbol(Symbol::from("k")),
        Value::List(vec![Value::Int(1)]),
    );
    vec![
        ("empty", message(Body::Empty)),
        (
            "data",
            message(Body::Data(Batch::new(vec![Data(Binary::from(
                b"raw".to_vec(),
            ))]))),
        ),
        (
            "data-sections",
            message(Body::Data(Batch::new(vec![
                Data(Binary::from(b"a".to_vec())),
                Data(Binary::from(b"b".to_vec())),
            ]))),
        ),
        ("string", message(text("hello"))),
        (
            "binary",
            message(Body::Value(AmqpValue(Value::Binary(Binary::from(vec![
                1, 2,
            ]))))),
        ),
        ("long", message(Body::Value(AmqpValue(Value::Long(42))))),
        (
            "map",
            message(Body::Value(AmqpValue(Value::Map(nested.clone())))),
        ),
        (
            "sequence",
            message(Body::Sequence(Batch::new(vec![
                AmqpSequence(vec![Value::String("x".into()), Value::Int(1)]),
                AmqpSequence(vec![Value::Map(nested)]),
            ]))),
        ),
        (
            "string-with-key",
            annotated(Value::String("customer-9".into()), text("order")),
        ),
        (
            "symbol-key",
            annotated(Value::Symbol(Symbol::from("k")), text("order")),
        ),
        (
            "binary-key",
            annotated(Value::Binary(Binary::from(vec![0xff])), text("order")),
        ),
        ("int-key-refused", annotated(Value::Int(3), text("order"))),
        (
            "data-with-properties",
            AmqpMessage {
                header: Some(Header::builder().durable(true).priority(7).build()),
                properties: Some(Properties {
                    message_id: Some(MessageId::String("m-1".into())),
                    correlation_id: Some(MessageId::Ulong(9)),
                    subject: Some("created".into()),
                    content_type: Some(Symbol::from("application/json")),
                    content_encoding: Some(Symbol::from("gzip")),
                    reply_to: Some("replies".into()),
                    to: Some("orders".into()),
                    group_id: Some("g".into()),
                    creation_time: Some(Timestamp::from_milliseconds(1_700_000_000_000)),
                    ..Properties::default()
                }),
                application_properties: Some(ApplicationProperties(every_property)),
                ..message(Body::Data(Batch::new(vec![Data(Binary::from(
                    b"{\"n\":1}".to_vec(),
                ))])))
            },
        ),
        (
            "reserved-property-refused",
            AmqpMessage {
                application_properties: Some(ApplicationProperties(reserved)),
                ..message(text("x"))
            },
        ),
    ]
}

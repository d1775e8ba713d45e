//! One connection of a script, played against the gateway's session code over an in-memory
//! stream: the client writes CONNECT and its steps, reads (and checks, see `answers`) everything
//! the gateway writes meanwhile, then closes its side. The gateway must end the connection within
//! [`BOUND`].

use std::{cell::RefCell, net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use courier_mqtt::{bridge::Bridge, session};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::Notify,
};

use crate::{
    answers::Answers,
    encode,
    script::{Connection, Step},
};

/// Longest a connection may last from CONNECT until the gateway has closed it, once the client
/// has closed its side. The gateway's own waits at close are shorter (5 s for pending appends).
pub const BOUND: Duration = Duration::from_secs(15);
/// Longest [`Step::AwaitAnswer`] waits.
const AWAIT: Duration = Duration::from_millis(2);

/// Plays `connection` as `client_id` and returns what the gateway answered.
pub async fn run(bridge: &Arc<Bridge>, connection: &Connection, client_id: String) -> Answers {
    let version = encode::version(&connection.connect);
    let answers = RefCell::new(Answers::new(
        version,
        encode::limits(&connection.connect),
        bridge.config.max_inflight,
    ));
    let answered = Notify::new();
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (mut from_gateway, mut to_gateway) = tokio::io::split(client);
    let peer = SocketAddr::from(([127, 0, 0, 1], 50000));
    let serve = session::run(bridge.clone(), server, peer, None);
    let write = async {
        let mut out = BytesMut::new();
        encode::connect(&connection.connect, client_id, &mut out);
        if to_gateway.write_all(&out).await.is_err() {
            return;
        }
        for step in &connection.steps {
            out.clear();
            match step {
                Step::AwaitAnswer => await_answer(&answers, &answered).await,
                Step::AcknowledgeReceived => {
                    let owed = answers.borrow_mut().take_owed();
                    for packet in owed {
                        answers.borrow_mut().sent(&packet, None);
                        encode::acknowledgement(version, packet, &mut out);
                    }
                }
                step => {
                    if let Some(packet) = encode::step(version, step, &mut out) {
                        answers.borrow_mut().sent(&packet, publish_header(step));
                    }
                }
            }
            if !out.is_empty() && to_gateway.write_all(&out).await.is_err() {
                break;
            }
        }
        let _ = to_gateway.shutdown().await;
    };
    let read = async {
        let mut buffer = vec![0; 16 * 1024];
        while let Ok(read @ 1..) = from_gateway.read(&mut buffer).await {
            answers.borrow_mut().read(&buffer[..read]);
            answered.notify_waiters();
        }
        answers.borrow().closed();
    };
    tokio::time::timeout(BOUND, async { tokio::join!(serve, write, read) })
        .await
        .unwrap_or_else(|_| panic!("the gateway did not end the connection within {BOUND:?}"));
    answers.into_inner()
}

/// Waits until the gateway has written one more packet, or [`AWAIT`].
async fn await_answer(answers: &RefCell<Answers>, answered: &Notify) {
    let before = answers.borrow().received();
    let _ = tokio::time::timeout(AWAIT, async {
        while answers.borrow().received() == before {
            answered.notified().await;
        }
    })
    .await;
}

/// A PUBLISH step's QoS and packet id, which rumqttd's packet keeps to itself.
fn publish_header(step: &Step) -> Option<(u8, u16)> {
    match step {
        Step::Publish(publish) => Some((encode::qos(publish.qos) as u8, publish.pkid.get())),
        _ => None,
    }
}

//! Deliveries of many frames each reach a receiver whole, in a gateway served in process.
//!
//! fe2o3 writes a message larger than the client's max-frame-size as several transfer frames, and
//! its send yields between them (when the connection's queue is full, or the task's budget is
//! spent). A receiver with credit for several deliveries settles each as it comes, so its outcomes
//! reach the gateway while the next delivery is going out; every delivery must still go out whole,
//! one after another. A send given up between two frames, and a new delivery started after it, is
//! one the receiver cannot put together: fe2o3's receiver detaches the link for it (deliveries of
//! a link may not interleave, AMQP 1.0 §2.6.14).

mod support;

use std::time::Duration;

use courier_amqp::Config;
use fe2o3_amqp::{
    Connection, Receiver, Sender, Session,
    link::receiver::CreditMode,
    types::{messaging::Message, primitives::Binary},
};
use support::*;

/// Records written, and their size: each is about 140 frames at the receiver's max-frame-size.
const RECORDS: usize = 40;
const RECORD_SIZE: usize = 64 * 1024;
/// The receiver's max-frame-size, the least AMQP allows.
const MAX_FRAME_SIZE: u32 = 512;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_settling_as_it_goes_gets_every_delivery_of_many_frames_whole() -> TestResult {
    let gateway = Gateway::start(Config::default()).await?;
    let mut producer = gateway.connect("producer").await?;
    let mut producer_session = Session::begin(&mut producer).await?;
    let mut sender = Sender::attach(&mut producer_session, "records", "many-frames").await?;
    for i in 0..RECORDS {
        let outcome = sender
            .send(Message::from(Binary::from(named::body(
                "record",
                i,
                RECORD_SIZE,
            ))))
            .await?;
        assert!(outcome.is_accepted(), "{outcome:?}");
    }

    let mut connection = Connection::builder()
        .container_id("many-frames")
        .max_frame_size(MAX_FRAME_SIZE)
        .open(format!("amqp://{}", gateway.address).as_str())
        .await?;
    let mut session = Session::begin(&mut connection).await?;
    // Credit for several deliveries, so the gateway sends the next while the receiver's outcome
    // for the last one comes in.
    let mut receiver = Receiver::builder()
        .name("receiver")
        .source("many-frames/groups/g")
        .credit_mode(CreditMode::Auto(8))
        .attach(&mut session)
        .await?;
    let seen = named::receive_names(&mut receiver, RECORDS, Duration::from_secs(120)).await?;
    for i in 0..RECORDS {
        assert!(
            seen.contains(&format!("record-{i:04}")),
            "record-{i:04} never came"
        );
    }

    receiver.close().await?;
    session.end().await?;
    connection.close().await?;
    sender.close().await?;
    producer_session.end().await?;
    producer.close().await?;
    gateway.stop().await
}

//! Messages named by their number, and receiving until every name came: how the delivery tests
//! tell that nothing was lost (a name seen twice is a redelivery, which at-least-once allows).

use std::{collections::BTreeSet, time::Duration};

use fe2o3_amqp::{
    Receiver,
    types::{messaging::Body, primitives::Value},
};

use super::Error;

/// A body of `size` bytes that starts with its name, `<prefix>-<i>|`.
pub fn body(prefix: &str, i: usize, size: usize) -> Vec<u8> {
    let mut body = format!("{prefix}-{i:04}|").into_bytes();
    body.resize(size, b'x');
    body
}

/// The name a [`body`] starts with.
pub fn name_of(body: &[u8]) -> String {
    String::from_utf8_lossy(body.split(|byte| *byte == b'|').next().unwrap_or_default())
        .into_owned()
}

/// Receives, accepting each delivery, until `count` different names came (each delivery within
/// `wait`); the names seen.
pub async fn receive_names(
    receiver: &mut Receiver,
    count: usize,
    wait: Duration,
) -> Result<BTreeSet<String>, Error> {
    let mut seen = BTreeSet::new();
    while seen.len() < count {
        let delivery = tokio::time::timeout(wait, receiver.recv::<Body<Value>>()).await??;
        match delivery.body() {
            Body::Value(value) => match &value.0 {
                Value::Binary(bytes) => {
                    seen.insert(name_of(bytes));
                }
                other => return Err(format!("unexpected body {other:?}").into()),
            },
            other => return Err(format!("unexpected body {other:?}").into()),
        }
        receiver.accept(&delivery).await?;
    }
    Ok(seen)
}

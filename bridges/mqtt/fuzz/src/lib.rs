//! The MQTT session fuzz target's parts: a client's life as a [`script`] of connections and
//! packets (built from the fuzzer's bytes by `arbitrary`), [`encode`]d with the bridge's codec,
//! played by a [`client`] against the session code of one [`gateway`] per process, whose
//! [`answers`] are checked as they arrive.

pub mod answers;
pub mod client;
pub mod encode;
pub mod gateway;
pub mod script;

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicU64, Ordering},
};

use script::{ClientId, Connect, Connection, Interval, KeepAlive, ProtocolVersion, Script, Step};

/// Plays `script` (within its bounds), then ends every session it left behind.
pub fn play(script: Script) {
    static INPUTS: AtomicU64 = AtomicU64::new(0);
    let input = INPUTS.fetch_add(1, Ordering::Relaxed);
    let gateway = gateway::gateway();
    let script = script.bounded();
    gateway.runtime.block_on(async {
        let mut client_ids = BTreeSet::new();
        for connection in &script.connections {
            let client_id = encode::client_id(connection.connect.client_id, input);
            client_ids.insert(client_id.clone());
            client::run(&gateway.bridge, connection, client_id).await;
        }
        // Sessions the input left stay in the gateway's session store; a clean start that ends
        // the session with its connection removes them, so inputs do not pile up state.
        for client_id in client_ids.into_iter().filter(|id| !id.is_empty()) {
            let answers = client::run(&gateway.bridge, &forget(), client_id).await;
            assert_eq!(answers.accepted(), Some(true), "a clean start was refused");
        }
    });
}

/// A connection that starts its session anew and ends it at once.
fn forget() -> Connection {
    Connection {
        connect: Connect {
            version: ProtocolVersion::V5,
            client_id: ClientId::Empty,
            clean_start: true,
            keep_alive: KeepAlive::None,
            login: false,
            will: None,
            session_expiry: Some(Interval::Zero),
            receive_maximum: None,
            max_packet_size: None,
            topic_alias_maximum: None,
            authentication_method: false,
        },
        steps: vec![Step::Disconnect {
            reason: script::DisconnectReason::Normal,
            session_expiry: None,
        }],
    }
}

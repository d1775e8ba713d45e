//! Arbitrary bytes into the MQTT decoder, as a new connection (version from CONNECT) and as an MQTT
//! 3.1.1 and an MQTT 5 connection past CONNECT. Decoding must answer a packet, "need more bytes" or an
//! error: never panic, never loop without consuming.

#![no_main]

use bytes::BytesMut;
use courier_mqtt::codec::{Codec, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for mut codec in [
        Codec::new(64 * 1024),
        Codec::with_version(Version::V4, 64 * 1024),
        Codec::with_version(Version::V5, 64 * 1024),
    ] {
        let mut buffer = BytesMut::from(data);
        while let Ok(Some(_)) = codec.decode(&mut buffer) {}
    }
});

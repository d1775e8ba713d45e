//! Arbitrary bytes as a client's side of an AMQP connection, read as the gateway reads it. A client
//! that starts with the SASL protocol header (or sends fewer than eight bytes) meets Courier's SASL
//! layer, once as a loopback client and once as one with a certificate; when that lets it in, the
//! rest of its bytes go to fe2o3's engine, as they do in the gateway. Any other header goes to the
//! engine at once. Nothing may panic; the SASL answers are checked (see `sasl`).

#![no_main]

use courier_amqp_fuzz::{
    engine,
    sasl::{self, Client, SASL_HEADER},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < SASL_HEADER.len() || data.starts_with(&SASL_HEADER) {
        for client in Client::ALL {
            if let Some(negotiated) = sasl::negotiate(data, client)
                && negotiated.result.is_ok()
            {
                engine::accept(negotiated.rest);
            }
        }
    } else {
        engine::accept(data);
    }
});

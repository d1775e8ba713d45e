//! The MQTT session state machine driven by packet sequences: the fuzzer's bytes become a client's
//! connections (a CONNECT, 3.1.1 or 5, then up to 64 packets in all), played one after the other
//! against the gateway's session code over an in-memory stream, with the embedded log behind it.
//! Nothing may panic, every connection must end within a bound once its client has closed, and
//! what the gateway writes must be well formed and answer what the client sent (see `answers`).
//! `cargo fuzz fmt session <input>` prints an input as the script it plays. Run it with
//! `-detect_leaks=0`: the gateway lives as long as the process and keeps what inputs leave behind,
//! which libFuzzer's per-input leak check would report, after running each such input twice.

#![no_main]

use courier_mqtt_fuzz::script::Script;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|script: Script| courier_mqtt_fuzz::play(script));

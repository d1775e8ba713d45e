//! Helpers the test suites share: [`Tansu`], a real Kafka-protocol broker process per test, and
//! [`certs`], a certificate authority of its own per test for the TLS tests.

pub mod certs;
mod tansu;

pub use tansu::{Tansu, TansuError};

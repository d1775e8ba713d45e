//! Helpers the test suites share: [`Tansu`], a real Kafka-protocol broker process per test, and
//! [`certs`], a certificate authority of its own per test for the TLS tests, and [`identity`], a
//! token issuer of its own per test (a key, its JWKS, JWTs) for the authentication tests.

pub mod certs;
pub mod identity;
mod tansu;

pub use tansu::{Tansu, TansuError};

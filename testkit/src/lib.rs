//! Helpers the test suites share. Today: [`Tansu`], a real Kafka-protocol broker process per test.

mod tansu;

pub use tansu::{Tansu, TansuError};

//! TLS for every listener, with rustls: a front end with a `[<front end>.tls]` table starts a
//! [`TlsAcceptor`] per TLS listener and hands each accepted TCP stream to it. The handshake gives the
//! stream and, when the client presented a verified certificate, its [`ClientIdentity`], which the
//! connection keeps (for logs, gRPC's request extensions, and the principal authentication will take
//! from it; nothing authorizes by it yet).
//!
//! Modules:
//! - [`config`]: the `tls` table (files, client certificate mode, versions, SNI certificates);
//! - `material`: the files to a rustls server config;
//! - `acceptor`: the reloading acceptor and the handshake, its refusals logged and counted;
//! - `identity`: a client certificate's names and fingerprint;
//! - `listeners`: a plain and a TLS listener accepted as one, for request/response endpoints
//!   (gRPC, HTTP).
//!
//! The crypto provider is *ring*: it builds with the C compiler alone, where aws-lc-rs compiles a
//! large C library (slow on every clean build, and it wants more tools on some platforms).
//! Only TLS 1.2 and 1.3 are offered.

mod acceptor;
pub mod config;
mod identity;
mod listeners;
mod material;

pub use self::{
    acceptor::{Accepted, Refusal, TlsAcceptor},
    config::{ClientAuth, SniCertificate, TlsConfig, TlsVersion},
    identity::ClientIdentity,
    listeners::{Connection, Gates, Listeners, MaybeTls, accept_on},
};
pub use tokio_rustls::server::TlsStream;

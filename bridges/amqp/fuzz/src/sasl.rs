//! Courier's own SASL layer (`courier_amqp::sasl::negotiate`) over a client's bytes, as the gateway
//! runs it for a connection whose first bytes are the SASL protocol header: header answered,
//! mechanisms offered, the client's sasl-init read (Courier's frame reader) and judged, the outcome
//! sent. What the gateway wrote back is checked: the SASL header, sasl-mechanisms, then a
//! sasl-outcome that says `ok` exactly when a principal came out.

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use bytes::BytesMut;
use courier_amqp::sasl::{self, Peer, SaslError};
use courier_gateway::{
    auth::{Access, Authenticator, Principal, Protected, Source},
    tls::ClientIdentity,
};
use fe2o3_amqp::{frames::sasl::Frame, types::sasl::SaslCode};
use tokio_util::codec::Decoder as _;

use crate::known_bugs;

/// The protocol header a SASL connection starts with (AMQP 1.0 §5.3.1).
pub const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";

/// The name the fuzzed client's certificate proves.
const CERTIFICATE_NAME: &str = "fuzz-client";

/// Who connects: each input is negotiated as each of these.
#[derive(Debug, Clone, Copy)]
pub enum Client {
    /// On loopback without a certificate: offered ANONYMOUS, which succeeds.
    Loopback,
    /// From another host with a verified certificate: offered EXTERNAL alone.
    WithCertificate,
}

impl Client {
    pub const ALL: [Self; 2] = [Self::Loopback, Self::WithCertificate];

    fn address(self) -> SocketAddr {
        match self {
            Self::Loopback => SocketAddr::from(([127, 0, 0, 1], 40000)),
            Self::WithCertificate => SocketAddr::from(([192, 0, 2, 7], 40000)),
        }
    }
}

/// What one exchange came to.
#[derive(Debug)]
pub struct Negotiated<'a> {
    pub result: Result<Principal, SaslError>,
    /// The client's bytes after the exchange: where fe2o3's acceptor takes over on success.
    pub rest: &'a [u8],
}

/// Runs the exchange on `bytes` as `client` and checks what the gateway answered. `None`: the
/// bytes would hit a known bug (see `known_bugs`) in Courier's SASL frame reader, and were not
/// played.
pub fn negotiate(bytes: &[u8], client: Client) -> Option<Negotiated<'_>> {
    if frames_hit_known_bug(bytes) {
        return None;
    }
    let fixture = fixture();
    let certificate = match client {
        Client::Loopback => None,
        Client::WithCertificate => Some(&fixture.certificate),
    };
    let peer = Peer {
        address: client.address(),
        certificate,
    };
    let mut stream = tokio::io::join(bytes, Vec::new());
    let result = fixture.runtime.block_on(sasl::negotiate(
        &mut stream,
        &fixture.authenticator,
        peer,
        crate::engine::MAX_FRAME_SIZE as u32,
        Duration::from_secs(5),
    ));
    let (rest, written) = stream.into_inner();
    check_answer(bytes, &written, &result, client);
    Some(Negotiated { result, rest })
}

/// Known bugs (see `known_bugs`) in a frame the SASL reader would take: after the 8-byte header,
/// each a 4-byte size and the rest, of which the frame header (4 bytes) comes first.
fn frames_hit_known_bug(bytes: &[u8]) -> bool {
    let mut rest = bytes.get(SASL_HEADER.len()..).unwrap_or_default();
    while let Some((size, after)) = rest.split_first_chunk::<4>() {
        let size = (u32::from_be_bytes(*size) as usize).saturating_sub(4);
        let (frame, next) = after.split_at(size.min(after.len()));
        if known_bugs::in_encoded(frame.get(4..).unwrap_or_default()) {
            return true;
        }
        rest = next;
    }
    false
}

/// What the gateway wrote must be the SASL header (once it read a header of its own), then
/// sasl-mechanisms and at most one sasl-outcome, `ok` exactly when a principal came out.
fn check_answer(
    client_bytes: &[u8],
    written: &[u8],
    result: &Result<Principal, SaslError>,
    client: Client,
) {
    if client_bytes.len() < SASL_HEADER.len() {
        assert!(written.is_empty(), "answered a short header: {written:?}");
        return;
    }
    let frames = written
        .strip_prefix(&SASL_HEADER)
        .unwrap_or_else(|| panic!("the answer does not start with the SASL header: {written:?}"));
    let frames = sasl_frames(frames);
    let mut frames = frames.iter();
    if !client_bytes.starts_with(&SASL_HEADER) {
        assert!(frames.next().is_none(), "frames after a wrong header");
        assert!(result.is_err());
        return;
    }
    assert!(
        matches!(frames.next(), Some(Frame::Mechanisms(_))),
        "no sasl-mechanisms first"
    );
    let outcome = frames.next();
    assert!(frames.next().is_none(), "more than one sasl-outcome");
    match (result, outcome) {
        (Ok(principal), Some(Frame::Outcome(outcome))) => {
            assert!(matches!(outcome.code, SaslCode::Ok), "{outcome:?}");
            match client {
                Client::Loopback => assert!(principal.is_anonymous(), "{principal:?}"),
                Client::WithCertificate => assert!(
                    principal.source == Source::Certificate && principal.name == CERTIFICATE_NAME,
                    "{principal:?}"
                ),
            }
        }
        (Err(_), Some(Frame::Outcome(outcome))) => {
            assert!(!matches!(outcome.code, SaslCode::Ok), "{outcome:?}");
        }
        // The client broke off (or sent no frame) before there was anything to answer.
        (Err(SaslError::Io(_)), None) => {}
        (result, outcome) => panic!("{result:?} answered with {outcome:?}"),
    }
}

/// The SASL frames in `bytes` (each a 4-byte size, then fe2o3's codec), all of which must decode.
fn sasl_frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some((size, rest)) = bytes.split_first_chunk::<4>() {
        let size = u32::from_be_bytes(*size) as usize;
        assert!(
            size >= 8 && size - 4 <= rest.len(),
            "a frame of {size} bytes"
        );
        let (frame, after) = rest.split_at(size - 4);
        let mut frame = BytesMut::from(frame);
        match (fe2o3_amqp::frames::sasl::FrameCodec {}).decode(&mut frame) {
            Ok(Some(decoded)) => frames.push(decoded),
            other => panic!("the gateway wrote a SASL frame that does not decode: {other:?}"),
        }
        bytes = after;
    }
    assert!(bytes.is_empty(), "a partial frame: {bytes:?}");
    frames
}

/// Built once per process: the runtime the exchange runs on, an authenticator as the gateway's with
/// no `[auth]` configured (anonymous on loopback, certificates name principals).
struct Fixture {
    runtime: tokio::runtime::Runtime,
    authenticator: Authenticator,
    certificate: ClientIdentity,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        Fixture {
            runtime,
            authenticator: Access::loopback("amqp", Protected::new([])).authenticator,
            certificate: ClientIdentity {
                common_name: Some(CERTIFICATE_NAME.to_owned()),
                fingerprint: "ab".repeat(32),
                ..ClientIdentity::default()
            },
        }
    })
}

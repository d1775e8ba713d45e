//! Answering a connection the gateway will not serve, in AMQP's own way and cheaply, so the client
//! hears why instead of seeing its socket drop.
//!
//! The client's protocol header is read. If it asks for SASL, the mechanisms offered are EXTERNAL,
//! PLAIN and ANONYMOUS, and whatever sasl-init comes is answered `ok` without being looked at: nothing
//! is granted, so no password is checked (no hashing, no login throttle) and none is kept. Then the
//! AMQP header, OPEN, and at once CLOSE with the condition and description. Clients report the
//! CLOSE's error (Qpid Proton raises it as a `ConnectionException` naming both). The whole exchange
//! runs within a deadline; the socket closes once the client has hung up or the deadline passes.
//!
//! [`Server`](crate::Server) calls it, in the connection's task, for a connection the limits
//! turn away ([`Admission::Refuse`]).

use std::{io, time::Duration};

use courier_gateway::limits::Permit;

use fe2o3_amqp::{
    frames::sasl::Frame,
    types::{
        definitions::ErrorCondition,
        primitives::{Array, Symbol},
        sasl::{SaslCode, SaslMechanisms, SaslOutcome},
    },
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::OwnedSemaphorePermit,
};

use crate::{
    error::Refusal,
    sasl::{Mechanism, frame},
    transport::{AMQP_HEADER, SASL_HEADER},
    wire,
};

/// What the accept loop decides for a connection, by the limits (`[limits]`), before anything is
/// read from it.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Served, holding its place under the limits while it lasts.
    Serve(Permit),
    /// Answered in AMQP and closed, in the connection's own task: OPEN, then at once CLOSE with
    /// this condition (`amqp:resource-limit-exceeded`) and description. A client that asks for
    /// SASL is let through it without its credentials being checked: nothing is granted, so no
    /// password is hashed for a connection that is turned away. The whole exchange is bounded by
    /// `amqp.handshake_timeout`; the permit is one of the few refusals answered at once.
    Refuse(Refusal, OwnedSemaphorePermit),
}

/// Largest sasl-init read (and dropped): a JWT as a PLAIN password fits.
const MAX_SASL_FRAME: u32 = 64 * 1024;

/// Answers `stream` (a connection just accepted, TLS done if any) with OPEN and CLOSE carrying
/// `condition` and `description`, SASL first if the client asks, all within `deadline`.
pub(crate) async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    condition: ErrorCondition,
    description: String,
    deadline: Duration,
) -> io::Result<()> {
    tokio::time::timeout(deadline, exchange(&mut stream, condition, description))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the refused client took too long"))?
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    condition: ErrorCondition,
    description: String,
) -> io::Result<()> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await?;
    if header == SASL_HEADER {
        pass_sasl(stream).await?;
        stream.read_exact(&mut header).await?;
    }
    if header != AMQP_HEADER {
        // A protocol the gateway does not speak here: it says which one it does (§2.2).
        stream.write_all(&AMQP_HEADER).await?;
        stream.shutdown().await?;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an AMQP protocol header: {header:?}"),
        ));
    }
    let mut reply = AMQP_HEADER.to_vec();
    reply.extend(wire::open(&wire::container_id(), 512, 0));
    reply.extend(wire::close(condition, description));
    stream.write_all(&reply).await?;
    stream.flush().await?;
    stream.shutdown().await?;
    // What the client still sends (its OPEN, its CLOSE) is read and dropped until it hangs up, so
    // the socket closes without a reset that could lose the CLOSE on its way.
    tokio::io::copy(stream, &mut tokio::io::sink()).await?;
    Ok(())
}

/// The SASL layer, passed without checking anything.
async fn pass_sasl<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> io::Result<()> {
    stream.write_all(&SASL_HEADER).await?;
    let offered = [Mechanism::External, Mechanism::Plain, Mechanism::Anonymous]
        .map(|mechanism| Symbol::from(mechanism.name()));
    frame::write_frame(
        stream,
        Frame::Mechanisms(SaslMechanisms {
            sasl_server_mechanisms: Array::from(offered.to_vec()),
        }),
    )
    .await?;
    let code = match frame::read_frame(stream, MAX_SASL_FRAME).await? {
        Frame::Init(_) => SaslCode::Ok,
        _ => SaslCode::Sys,
    };
    frame::write_frame(
        stream,
        Frame::Outcome(SaslOutcome {
            code: code.clone(),
            additional_data: None,
        }),
    )
    .await?;
    match code {
        SaslCode::Ok => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "expected sasl-init",
        )),
    }
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::{
        definitions::AmqpError,
        performatives::{Close, Performative},
        sasl::SaslInit,
    };
    use tokio::io::DuplexStream;

    use super::*;

    async fn read_performative(stream: &mut DuplexStream) -> Performative {
        let size = stream.read_u32().await.unwrap() as usize;
        let mut rest = vec![0; size - 4];
        stream.read_exact(&mut rest).await.unwrap();
        serde_amqp::from_slice(&rest[4..]).unwrap()
    }

    fn refused(server: DuplexStream) -> tokio::task::JoinHandle<io::Result<()>> {
        tokio::spawn(refuse(
            server,
            AmqpError::ResourceLimitExceeded.into(),
            "too many connections from 192.0.2.7".into(),
            Duration::from_secs(10),
        ))
    }

    async fn expect_open_then_close(client: &mut DuplexStream) {
        let mut header = [0; 8];
        client.read_exact(&mut header).await.unwrap();
        assert_eq!(header, AMQP_HEADER);
        assert!(matches!(
            read_performative(client).await,
            Performative::Open(_)
        ));
        let Performative::Close(Close { error: Some(error) }) = read_performative(client).await
        else {
            panic!("expected CLOSE with an error");
        };
        assert_eq!(error.condition, AmqpError::ResourceLimitExceeded.into());
        assert_eq!(
            error.description.as_deref(),
            Some("too many connections from 192.0.2.7")
        );
    }

    #[tokio::test]
    async fn sasl_passes_whatever_the_credentials_then_open_and_close_say_why() {
        let (mut client, server) = tokio::io::duplex(4096);
        let refusing = refused(server);
        client.write_all(&SASL_HEADER).await.unwrap();
        let mut header = [0; 8];
        client.read_exact(&mut header).await.unwrap();
        assert_eq!(header, SASL_HEADER);
        let Frame::Mechanisms(mechanisms) = frame::read_frame(&mut client, 512).await.unwrap()
        else {
            panic!("expected sasl-mechanisms");
        };
        assert_eq!(mechanisms.sasl_server_mechanisms.0.len(), 3);
        let init = SaslInit {
            mechanism: Symbol::from("PLAIN"),
            initial_response: Some(b"\0mallory\0not-a-password".to_vec().into()),
            hostname: None,
        };
        frame::write_frame(&mut client, Frame::Init(init))
            .await
            .unwrap();
        let Frame::Outcome(outcome) = frame::read_frame(&mut client, 512).await.unwrap() else {
            panic!("expected sasl-outcome");
        };
        assert_eq!(outcome.code, SaslCode::Ok);
        client.write_all(&AMQP_HEADER).await.unwrap();
        expect_open_then_close(&mut client).await;
        drop(client);
        refusing.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_client_that_skips_sasl_hears_the_same() {
        let (mut client, server) = tokio::io::duplex(4096);
        let refusing = refused(server);
        client.write_all(&AMQP_HEADER).await.unwrap();
        expect_open_then_close(&mut client).await;
        drop(client);
        refusing.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_says_nothing_is_let_go_at_the_deadline() {
        let (_client, server) = tokio::io::duplex(4096);
        let error = refused(server).await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}

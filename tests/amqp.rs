//! The AMQP 1.0 endpoint end to end with python-qpid-proton (the Qpid Proton client applications use):
//! on the embedded log and in front of a Kafka-protocol broker (tansu), with SASL PLAIN, with topic
//! auto-creation off, next to a native Kafka client (confluent-kafka), and a receiver that moves to
//! another gateway replica when its gateway dies; and over TLS (AMQPS, mutual TLS, AMQP's TLS
//! upgrade). The checks themselves are in `tests/python/amqp_client_test.py` and
//! `tests/python/amqp_tls_test.py`. And a client that dribbles its handshake, cut off at
//! `amqp.handshake_timeout` and counted in `courier_limit_refusals_total`.

mod common;

use common::*;
use courier_testkit::Tansu;

/// Small enough that the oversized-message check stays cheap.
const MAX_MESSAGE_SIZE: &str = "65536";

fn proton(mode: &str, gateway: &Gateway, extra: &[&str]) -> TestResult {
    let address = gateway.amqp.to_string();
    let args = [&[mode, "--address", &address][..], extra].concat();
    let stdout = run_python("amqp_client_test.py", &args, gateway)?;
    assert!(stdout.contains("all checks passed"), "{stdout}");
    Ok(())
}

#[test]
fn proton_clients_on_the_embedded_log() -> TestResult {
    let _serial = one_broker_at_a_time();
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[("COURIER_AMQP__MAX_MESSAGE_SIZE", MAX_MESSAGE_SIZE)],
    )?;
    proton("core", &gateway, &["--max-message-size", MAX_MESSAGE_SIZE])?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

#[test]
fn proton_clients_in_front_of_kafka_and_next_to_a_native_kafka_client() -> TestResult {
    let _serial = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start_kafka(
        &dir.path().join("gateway"),
        &broker.bootstrap(),
        &[("COURIER_AMQP__MAX_MESSAGE_SIZE", MAX_MESSAGE_SIZE)],
    )?;
    proton(
        "core+interop",
        &gateway,
        &[
            "--bootstrap",
            &broker.bootstrap(),
            "--max-message-size",
            MAX_MESSAGE_SIZE,
        ],
    )?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

#[test]
fn links_to_missing_topics_are_refused_when_auto_create_is_off() -> TestResult {
    let _serial = one_broker_at_a_time();
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[("COURIER_TOPICS__AUTO_CREATE", "false")],
    )?;
    proton("no-auto-create", &gateway, &[])?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

#[test]
fn sasl_plain_checks_the_users_file() -> TestResult {
    let _serial = one_broker_at_a_time();
    let dir = tempfile::tempdir()?;
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        format!(
            "{}\n",
            courier_gateway::auth::users_file_line("app-1", "s3cret", &[])?
        ),
    )?;
    let users_file = users.display().to_string();
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[
            ("COURIER_AMQP__AUTH__USERS_FILE", users_file.as_str()),
            ("COURIER_AMQP__AUTH__ALLOW_ANONYMOUS", "false"),
        ],
    )?;
    proton(
        "sasl",
        &gateway,
        &["--user", "app-1", "--password", "s3cret"],
    )?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// A client that sends its handshake a byte at a time is cut off at `amqp.handshake_timeout`, and
/// the cut counted.
#[test]
fn a_dribbled_handshake_is_cut_off_and_counted() -> TestResult {
    use std::io::{Read as _, Write as _};
    let _serial = one_broker_at_a_time();
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[("COURIER_AMQP__HANDSHAKE_TIMEOUT", "1s")],
    )?;
    let mut slow = std::net::TcpStream::connect(gateway.amqp)?;
    slow.set_read_timeout(Some(std::time::Duration::from_millis(300)))?;
    // The SASL header, then a frame that announces 1 KiB and never gets it all.
    let mut dribble = b"AMQP\x03\x01\x00\x00\x00\x00\x04\x00".to_vec();
    dribble.resize(70, 0x40);
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut bytes = dribble.iter();
    let mut buf = [0u8; 256];
    loop {
        assert!(std::time::Instant::now() < deadline, "never cut off");
        if let Some(byte) = bytes.next()
            && slow.write_all(&[*byte]).is_err()
        {
            break;
        }
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    tokio::runtime::Runtime::new()?.block_on(scrape::await_series(
        gateway.http,
        &[(
            "courier_limit_refusals_total{protocol=\"amqp\",limit=\"handshake_timeout\"}",
            1.0,
        )],
    ))?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// Two replicas on one Kafka cluster: a group receiver on A accepts 100 of 300 messages (committed),
/// holds 20 more unsettled, and A is killed (SIGKILL) under it. Reattached on B, it receives the 200
/// it had not accepted, the 20 among them, and none of the 100 again.
#[test]
fn a_receiver_moves_to_another_replica_when_its_gateway_dies() -> TestResult {
    let _serial = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let first = Gateway::start_kafka(&dir.path().join("a"), &broker.bootstrap(), &[])?;
    let second = Gateway::start_kafka(&dir.path().join("b"), &broker.bootstrap(), &[])?;
    let first_pid = first
        .process_id()
        .ok_or("gateway A is not running")?
        .to_string();
    let second_address = second.amqp.to_string();
    proton(
        "failover",
        &first,
        &["--second", &second_address, "--first-pid", &first_pid],
    )
    .map_err(|e| format!("{e}\ngateway B log:\n{}", second.log()))?;
    assert!(second.terminate()?.success());
    Ok(())
}

/// The certificates of a TLS test (a CA, the gateway's server certificate and a client's) and a
/// gateway config with `[amqp.tls]` on a listener of its own beside the plain one.
struct Tls {
    // Holds the certificate files for the test.
    _dir: tempfile::TempDir,
    pki: courier_testkit::certs::TestPki,
    server: courier_testkit::certs::Issued,
}

impl Tls {
    fn new() -> Result<Self, BoxError> {
        let dir = tempfile::tempdir()?;
        let mut pki = courier_testkit::certs::TestPki::new(dir.path(), "amqp")?;
        let server = pki.server("server", &["localhost", "127.0.0.1"])?;
        Ok(Self {
            _dir: dir,
            pki,
            server,
        })
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "[amqp.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
            self.server.cert.display(),
            self.server.key.display()
        )
    }

    fn ca(&self) -> String {
        self.pki.ca().display().to_string()
    }
}

/// Runs `amqp_tls_test.py <mode> --address <address> <extra>`.
fn proton_tls(mode: &str, address: &str, gateway: &Gateway, extra: &[&str]) -> TestResult {
    let args = [&[mode, "--address", address][..], extra].concat();
    let stdout = run_python("amqp_tls_test.py", &args, gateway)?;
    assert!(stdout.contains("all checks passed"), "{stdout}");
    Ok(())
}

/// AMQPS beside plain AMQP: Proton over TLS (the server certificate checked, host name included)
/// sends and receives; a client asking for TLS AMQP's way (the TLS protocol header first) is answered
/// and handshaken; the plain listener serves on.
#[test]
fn proton_over_tls_and_the_amqp_tls_upgrade() -> TestResult {
    let _serial = one_broker_at_a_time();
    let tls = Tls::new()?;
    let work = tempfile::tempdir()?;
    let data = work.path().join("data").display().to_string();
    let gateway = Gateway::start_with_config(
        &work.path().join("gateway"),
        &tls.config(""),
        &[("COURIER_LOG__DATA_DIR", &data)],
    )?;
    let amqps = format!("localhost:{}", gateway.listener("amqps")?.port());
    let ca = tls.ca();
    proton_tls("round-trip", &amqps, &gateway, &["--ca", &ca])?;
    proton_tls("upgrade", &amqps, &gateway, &["--ca", &ca])?;
    proton_tls("round-trip", &gateway.amqp.to_string(), &gateway, &[])?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// Mutual TLS, required: Proton with a valid client certificate sends and receives (the connection's
/// log lines name the certificate's subject); one without a certificate is refused at the handshake,
/// logged and counted, while the plain listener serves on.
#[test]
fn proton_over_mutual_tls_refuses_a_client_without_a_certificate() -> TestResult {
    let _serial = one_broker_at_a_time();
    let mut tls = Tls::new()?;
    let client = tls
        .pki
        .client("client", "app-1", courier_testkit::certs::Validity::Now)?;
    let ca = tls.ca();
    let work = tempfile::tempdir()?;
    let data = work.path().join("data").display().to_string();
    let gateway = Gateway::start_with_config(
        &work.path().join("gateway"),
        &tls.config(&format!(
            "client_ca = \"{ca}\"\nclient_auth = \"required\"\n"
        )),
        &[
            ("COURIER_LOG__DATA_DIR", &data),
            // The connection's debug lines carry the client certificate's identity.
            ("RUST_LOG", "info,courier_gateway=debug,courier_amqp=debug"),
        ],
    )?;
    let amqps = format!("localhost:{}", gateway.listener("amqps")?.port());
    let (cert, key) = (
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );
    proton_tls(
        "round-trip",
        &amqps,
        &gateway,
        &["--ca", &ca, "--cert", &cert, "--key", &key],
    )?;
    proton_tls("refused", &amqps, &gateway, &["--ca", &ca])?;
    tokio::runtime::Runtime::new()?.block_on(scrape::await_series(
        gateway.http,
        &[(
            "courier_tls_handshake_failures_total{listener=\"amqp\",reason=\"certificate_required\"}",
            1.0,
        )],
    ))?;
    proton_tls("round-trip", &gateway.amqp.to_string(), &gateway, &[])?;
    let log = gateway.log();
    assert!(
        log.lines()
            .any(|line| line.contains("amqp.connection") && line.contains("app-1")),
        "no connection log line names the client certificate:\n{log}"
    );
    assert!(gateway.terminate()?.success());
    Ok(())
}

//! TLS end to end: the real binary with `[<front end>.tls]` tables, certificates made for each test
//! (tests/common and courier-testkit's `certs`), and the clients users have: mosquitto_pub and
//! mosquitto_sub, paho-mqtt over TLS and secure WebSocket, Python's `ssl`, and `openssl s_client`.
//! Every refusal is checked where the operator sees it: the gateway's log line and its metric.

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
};

use common::{scrape::*, *};
use courier_testkit::{
    Tansu,
    certs::{Issued, TestPki, Validity},
};

/// The certificates of one test: a CA, the gateway's server certificate, and clients.
struct Pki {
    dir: tempfile::TempDir,
    pki: TestPki,
    server: Issued,
}

impl Pki {
    fn new() -> Result<Self, BoxError> {
        let dir = tempfile::tempdir()?;
        let mut pki = TestPki::new(dir.path(), "courier")?;
        let server = pki.server("server", &["localhost", "127.0.0.1"])?;
        Ok(Self { dir, pki, server })
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// mosquitto_pub over TLS: one retained QoS 1 message. `Ok` when the broker acknowledged it.
fn mosquitto_pub_tls(
    port: u16,
    ca: &Path,
    client: Option<&Issued>,
    topic: &str,
    message: &str,
) -> Result<String, BoxError> {
    let port = port.to_string();
    let ca = display(ca);
    let mut args = vec![
        "-h",
        "localhost",
        "-p",
        &port,
        "--cafile",
        &ca,
        "-q",
        "1",
        "-r",
        "-t",
        topic,
        "-m",
        message,
        "-V",
        "mqttv5",
    ];
    let (cert, key);
    if let Some(client) = client {
        (cert, key) = (display(&client.cert), display(&client.key));
        args.extend(["--cert", &cert, "--key", &key]);
    }
    mosquitto("mosquitto_pub", &args, "")
}

/// mosquitto_sub over TLS: the first message of `topic` (its retained one), within 10 s.
fn mosquitto_sub_tls(
    port: u16,
    ca: &Path,
    client: Option<&Issued>,
    topic: &str,
) -> Result<String, BoxError> {
    let port = port.to_string();
    let ca = display(ca);
    let mut args = vec![
        "-h",
        "localhost",
        "-p",
        &port,
        "--cafile",
        &ca,
        "-q",
        "1",
        "-t",
        topic,
        "-C",
        "1",
        "-W",
        "10",
        "-V",
        "mqttv5",
    ];
    let (cert, key);
    if let Some(client) = client {
        (cert, key) = (display(&client.cert), display(&client.key));
        args.extend(["--cert", &cert, "--key", &key]);
    }
    Ok(mosquitto("mosquitto_sub", &args, "")?.trim().to_owned())
}

/// `openssl s_client` with `args`: whether the handshake completed, and what it printed.
fn s_client(port: u16, args: &[&str]) -> Result<(bool, String), BoxError> {
    let output = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("openssl (apt-get install openssl): {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // A finished handshake prints the negotiated cipher; a failed one "Cipher is (NONE)" or nothing.
    let connected = text.contains("Cipher is ") && !text.contains("Cipher is (NONE)");
    Ok((connected, text))
}

/// paho-mqtt publishing QoS 1 over TLS for `seconds` on one connection, in the background
/// (`tls_clients.py publish-for`).
struct Publisher(std::thread::JoinHandle<std::io::Result<std::process::Output>>);

impl Publisher {
    fn start(
        port: u16,
        ca: &Path,
        seconds: &str,
        topic: &str,
        certificate: Option<&Issued>,
    ) -> Result<Self, BoxError> {
        let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/python/tls_clients.py");
        let mut command = Command::new(python()?);
        command.arg(script).args([
            "publish-for",
            "localhost",
            &port.to_string(),
            &display(ca),
            seconds,
            topic,
        ]);
        if let Some(certificate) = certificate {
            command.arg(&certificate.cert).arg(&certificate.key);
        }
        Ok(Self(std::thread::spawn(move || command.output())))
    }

    /// Waits for it; fails unless it ended well and was never disconnected. What it published and
    /// saw acknowledged.
    fn finish(self) -> Result<Vec<String>, BoxError> {
        let output = self.0.join().map_err(|_| "the publisher panicked")??;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the publisher failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("disconnects=0"),
            "the publisher's connection was dropped: {stdout}"
        );
        Ok(stdout
            .lines()
            .filter(|line| line.starts_with('r'))
            .map(str::to_owned)
            .collect())
    }
}

/// Fails unless every acknowledged payload is in the MQTT messages topic.
async fn all_stored(gateway: &Gateway, acked: &[String]) -> TestResult {
    let stored = stored_values(gateway, "mqtt.messages").await?;
    for payload in acked {
        assert!(stored.contains(payload), "acknowledged {payload} was lost");
    }
    Ok(())
}

fn tls_table(pki: &Pki, extra: &str) -> String {
    format!(
        "[mqtt.tls]\nlisten = \"127.0.0.1:0\"\nwebsocket_listen = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
        display(&pki.server.cert),
        display(&pki.server.key)
    )
}

/// Plain TLS: mosquitto, paho over TCP and secure WebSocket, TLS 1.2 and 1.3 but nothing older, and
/// plain text on the TLS port refused, while the plain port serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_with_real_clients() -> TestResult {
    let pki = Pki::new()?;
    let work = tempfile::tempdir()?;
    let gateway = Gateway::start_with_config(
        &work.path().join("gateway"),
        &tls_table(&pki, ""),
        &[("COURIER_LOG__DATA_DIR", &display(&work.path().join("data")))],
    )?;
    let mqtts = gateway.listener("mqtts")?;
    let wss = gateway.listener("mqtt-wss")?;
    let ca = pki.pki.ca();

    let topic = unique("tls/mosquitto");
    mosquitto_pub_tls(mqtts.port(), ca, None, &topic, "over TLS")?;
    assert_eq!(
        mosquitto_sub_tls(mqtts.port(), ca, None, &topic)?,
        "over TLS"
    );
    tokio::task::block_in_place(|| {
        run_python(
            "tls_clients.py",
            &[
                "paho",
                "localhost",
                &mqtts.port().to_string(),
                "tcp",
                &display(ca),
            ],
            &gateway,
        )?;
        run_python(
            "tls_clients.py",
            &[
                "paho",
                "localhost",
                &wss.port().to_string(),
                "websockets",
                &display(ca),
            ],
            &gateway,
        )
    })?;

    // Versions: 1.2 and 1.3 are served; 1.0 and 1.1 are refused by the gateway (the client is told
    // to offer them at security level 0, so the refusal is the server's).
    for version in ["-tls1_2", "-tls1_3"] {
        let (connected, text) = s_client(mqtts.port(), &[version, "-CAfile", &display(ca)])?;
        assert!(connected, "{version} refused:\n{text}");
    }
    for version in ["-tls1", "-tls1_1"] {
        let (connected, text) =
            s_client(mqtts.port(), &[version, "-cipher", "DEFAULT@SECLEVEL=0"])?;
        assert!(!connected, "{version} served:\n{text}");
    }
    // Plain MQTT on the TLS port.
    let plain = mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &mqtts.port().to_string(),
            "-t",
            "x",
            "-m",
            "x",
            "-q",
            "1",
        ],
        "",
    );
    assert!(plain.is_err(), "plain text was served on the TLS port");
    // The plain listener is unaffected.
    let topic = unique("tls/plain");
    mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &gateway.mqtt.port().to_string(),
            "-t",
            &topic,
            "-m",
            "plain",
            "-q",
            "1",
            "-r",
        ],
        "",
    )?;

    await_series(
        gateway.http,
        &[
            ("courier_tls_handshake_failures_total{listener=\"mqtt\",reason=\"protocol_version\"}", 2.0),
            ("courier_tls_handshake_failures_total{listener=\"mqtt\",reason=\"not_tls\"}", 1.0),
        ],
    )
    .await?;
    let log = gateway.log();
    for reason in ["not_tls", "protocol_version"] {
        assert!(
            log.lines()
                .any(|line| line.contains("TLS handshake refused") && line.contains(reason)),
            "no log line names {reason}:\n{log}"
        );
    }
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// Mutual TLS, required: a valid client certificate is served (and the gateway logs whose it is);
/// no certificate, one from another CA, an expired, a not yet valid and a revoked one are each
/// refused at the handshake with their reason logged and counted, while a connected client goes on
/// publishing with nothing acknowledged lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_each_bad_certificate_and_spares_the_others() -> TestResult {
    let mut pki = Pki::new()?;
    let device = pki.pki.client("device", "device-1", Validity::Now)?;
    let expired = pki.pki.client("expired", "expired", Validity::Expired)?;
    let early = pki.pki.client("early", "early", Validity::NotYetValid)?;
    let revoked = pki.pki.client("revoked", "revoked", Validity::Now)?;
    let crl = pki.pki.crl("revoked.crl", &[revoked.serial])?;
    let stranger_dir = tempfile::tempdir()?;
    let stranger = TestPki::new(stranger_dir.path(), "stranger")?.client(
        "stranger",
        "stranger",
        Validity::Now,
    )?;
    let extra = format!(
        "client_ca = \"{}\"\nclient_auth = \"required\"\ncrl = \"{}\"\n",
        display(pki.pki.ca()),
        display(&crl)
    );
    let work = tempfile::tempdir()?;
    let data = display(&work.path().join("data"));
    // The MQTT session's debug lines carry the client certificate's identity.
    let env = [
        ("COURIER_LOG__DATA_DIR", data.as_str()),
        ("RUST_LOG", "info,courier_gateway=debug,courier_mqtt=debug"),
    ];
    let gateway =
        Gateway::start_with_config(&work.path().join("gateway"), &tls_table(&pki, &extra), &env)?;
    let mqtts = gateway.listener("mqtts")?;
    let ca = pki.pki.ca().to_owned();

    // A client publishing through the refusals below.
    let topic = unique("mtls/steady");
    let steady = Publisher::start(mqtts.port(), &ca, "6", &topic, Some(&device))?;

    let checked = unique("mtls/checked");
    mosquitto_pub_tls(mqtts.port(), &ca, Some(&device), &checked, "mutual")?;
    assert_eq!(
        mosquitto_sub_tls(mqtts.port(), &ca, Some(&device), &checked)?,
        "mutual"
    );
    // paho with its client certificate, over TLS and over secure WebSocket.
    let wss = gateway.listener("mqtt-wss")?;
    for (port, transport) in [(mqtts.port(), "tcp"), (wss.port(), "websockets")] {
        tokio::task::block_in_place(|| {
            run_python(
                "tls_clients.py",
                &[
                    "paho",
                    "localhost",
                    &port.to_string(),
                    transport,
                    &display(&ca),
                    &display(&device.cert),
                    &display(&device.key),
                ],
                &gateway,
            )
        })?;
    }

    let refused = [
        (None, "certificate_required"),
        (Some(&stranger), "unknown_ca"),
        (Some(&expired), "certificate_expired"),
        (Some(&early), "certificate_not_yet_valid"),
        (Some(&revoked), "certificate_revoked"),
    ];
    for (client, _) in &refused {
        let outcome = mosquitto_pub_tls(mqtts.port(), &ca, *client, &unique("mtls/refused"), "x");
        assert!(outcome.is_err(), "{client:?} was let in");
    }
    let expected: Vec<(String, f64)> = refused
        .iter()
        .map(|(_, reason)| {
            (
                format!(
                    "courier_tls_handshake_failures_total{{listener=\"mqtt\",reason=\"{reason}\"}}"
                ),
                1.0,
            )
        })
        .collect();
    let expected: Vec<(&str, f64)> = expected
        .iter()
        .map(|(name, value)| (name.as_str(), *value))
        .collect();
    await_series(gateway.http, &expected).await?;
    let log = gateway.log();
    for (_, reason) in &refused {
        assert!(
            log.lines()
                .any(|line| line.contains("TLS handshake refused")
                    && line.contains(reason)
                    && line.contains("peer=127.0.0.1:")),
            "no log line names the peer and {reason}:\n{log}"
        );
    }
    assert!(
        log.contains("device-1"),
        "the client certificate's identity is kept with its connection:\n{log}"
    );

    let acked = steady.finish()?;
    assert!(
        acked.len() > 10,
        "the publisher hardly published: {acked:?}"
    );
    all_stored(&gateway, &acked).await?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// Rotation: the certificate files are replaced while a client publishes over TLS; it goes on
/// without a disconnect, new connections get the new certificate, and every acknowledged message
/// is stored. A bad file afterwards keeps the new certificate serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_live_connections() -> TestResult {
    let mut pki = Pki::new()?;
    let rotated = pki.pki.server("rotated", &["localhost", "rotated.test"])?;
    let (cert, key) = (pki.path("live.crt"), pki.path("live.key"));
    std::fs::copy(&pki.server.cert, &cert)?;
    std::fs::copy(&pki.server.key, &key)?;
    let config = format!(
        "[mqtt.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\"\nreload_interval = \"500ms\"\n"
    );
    let work = tempfile::tempdir()?;
    let gateway = Gateway::start_with_config(
        &work.path().join("gateway"),
        &config,
        &[("COURIER_LOG__DATA_DIR", &display(&work.path().join("data")))],
    )?;
    let mqtts = gateway.listener("mqtts")?;
    let ca = display(pki.pki.ca());
    let port = mqtts.port().to_string();
    let names = || -> Result<String, BoxError> {
        Ok(tokio::task::block_in_place(|| {
            run_python(
                "tls_clients.py",
                &["peer-names", "localhost", &port, &ca],
                &gateway,
            )
        })?
        .trim()
        .to_owned())
    };
    assert_eq!(names()?, "localhost");

    let topic = unique("rotation");
    let publisher = Publisher::start(mqtts.port(), pki.pki.ca(), "5", &topic, None)?;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    std::fs::copy(&rotated.cert, &cert)?;
    std::fs::copy(&rotated.key, &key)?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while names()? != "localhost rotated.test" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new connections never saw the new certificate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let acked = publisher.finish()?;
    all_stored(&gateway, &acked).await?;

    // A broken key: reported, and the rotated certificate keeps serving. (The rotation above wrote
    // the certificate and then the key, so a check between the two may have counted a failure
    // already: the broken key must add one.)
    let failed = "courier_tls_reloads_total{listener=\"mqtt\",outcome=\"failed\"}";
    let (_, before) = tokio::task::block_in_place(|| get(gateway.http, "/metrics"))?;
    let failed_before = series(&before, failed).unwrap_or(0.0);
    std::fs::write(&key, "not a key")?;
    await_series(gateway.http, &[(failed, failed_before + 1.0)]).await?;
    assert_eq!(names()?, "localhost rotated.test");
    assert!(
        gateway
            .log()
            .contains("the previous certificates stay in use")
    );
    let (status, _) = tokio::task::block_in_place(|| get(gateway.http, "/readyz"))?;
    assert_eq!(
        status, 200,
        "a bad certificate file does not make the gateway unready"
    );
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// gRPC and HTTP over TLS beside their plain listeners: grpcio with `ssl_channel_credentials`,
/// without and with a client certificate (optional mode); `openssl s_client` negotiating ALPN `h2`;
/// plain HTTP/2 on the gRPC TLS port refused; the status endpoint over HTTPS while the probes stay
/// on plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_over_tls() -> TestResult {
    let mut pki = Pki::new()?;
    let app = pki.pki.client("app", "app-1", Validity::Now)?;
    let (cert, key, ca) = (
        display(&pki.server.cert),
        display(&pki.server.key),
        display(pki.pki.ca()),
    );
    let config = format!(
        "[grpc.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{ca}\"\nclient_auth = \"optional\"\n\
         [http.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\"\n"
    );
    let work = tempfile::tempdir()?;
    let gateway = Gateway::start_with_config(
        &work.path().join("gateway"),
        &config,
        &[("COURIER_LOG__DATA_DIR", &display(&work.path().join("data")))],
    )?;
    let grpcs = gateway.listener("grpcs")?;
    let https = gateway.listener("https")?;
    let proto = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("proto")
        .display()
        .to_string();
    let target = format!("localhost:{}", grpcs.port());
    tokio::task::block_in_place(|| -> TestResult {
        let anonymous = run_python("tls_clients.py", &["grpc", &target, &ca, &proto], &gateway)?;
        assert!(anonymous.contains("produced and fetched"), "{anonymous}");
        let mutual = run_python(
            "tls_clients.py",
            &[
                "grpc",
                &target,
                &ca,
                &proto,
                &display(&app.cert),
                &display(&app.key),
            ],
            &gateway,
        )?;
        assert!(mutual.contains("produced and fetched"), "{mutual}");
        let page = run_python(
            "tls_clients.py",
            &[
                "https-get",
                &format!("https://localhost:{}/healthz", https.port()),
                &ca,
            ],
            &gateway,
        )?;
        assert!(page.starts_with("200 ok"), "{page}");
        Ok(())
    })?;
    let (connected, text) = s_client(grpcs.port(), &["-alpn", "h2", "-CAfile", &ca])?;
    assert!(
        connected && text.contains("ALPN protocol: h2"),
        "no h2 over TLS:\n{text}"
    );
    // Plain HTTP/2 (h2c) on the TLS port: its connection preface is no TLS record.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut plain = tokio::net::TcpStream::connect(grpcs).await?;
        plain.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, plain.read_to_end(&mut answer)).await;
    }
    await_series(
        gateway.http,
        &[(
            "courier_tls_handshake_failures_total{listener=\"grpc\",reason=\"not_tls\"}",
            1.0,
        )],
    )
    .await?;
    let (status, body) = tokio::task::block_in_place(|| get(gateway.http, "/readyz"))?;
    assert_eq!(
        (status, body.trim()),
        (200, "ready"),
        "the probes stay on plain HTTP"
    );
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// MQTT over TLS in front of Kafka (a tansu broker): paho-mqtt with `tls_set` publishes and receives
/// through the gateway, and the messages are in the Kafka topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_in_front_of_kafka() -> TestResult {
    let broker = Tansu::start()?;
    let pki = Pki::new()?;
    // One record per produced batch and one replica: as tests/common's Gateway::start_kafka, for the
    // same tansu reasons (gateway/tests/kafka.rs).
    let config = format!(
        "[log]\nkind = \"kafka\"\nbootstrap_servers = \"{}\"\nreplication_factor = 1\nsession_timeout = \"6s\"\n\
         [log.producer_properties]\n\"batch.num.messages\" = \"1\"\n{}",
        broker.bootstrap(),
        tls_table(&pki, "")
    );
    let work = tempfile::tempdir()?;
    let gateway = Gateway::start_with_config(&work.path().join("gateway"), &config, &[])?;
    let mqtts = gateway.listener("mqtts")?;
    let ca = display(pki.pki.ca());
    let output = tokio::task::block_in_place(|| {
        run_python(
            "tls_clients.py",
            &["paho", "localhost", &mqtts.port().to_string(), "tcp", &ca],
            &gateway,
        )
    })?;
    assert!(
        output.contains("3 published and received over TLS"),
        "{output}"
    );
    let stored = stored_values(&gateway, "mqtt.messages").await?;
    for payload in ["m0", "m1", "m2"] {
        assert!(
            stored.iter().any(|value| value == payload),
            "{payload} is not in Kafka: {stored:?}"
        );
    }
    assert!(gateway.terminate()?.success());
    Ok(())
}

//! Who may connect to the AMQP endpoint and what they may do, end to end: the real binary in front
//! of Kafka (tansu) with `[auth]` (a users file, a policy, JWTs) and an AMQPS listener that asks
//! for client certificates, driven by python-qpid-proton (`tests/python/auth_amqp_test.py`), with
//! confluent-kafka reading Kafka directly to show that what was refused was not stored.

mod common;

use std::path::Path;

use common::{scrape, *};
use courier_testkit::{
    Tansu,
    certs::{TestPki, Validity},
    identity::{AUDIENCE, Claims, ISSUER, TokenIssuer},
};

/// Alice, the JWT's subject and the certificate's name may use `orders*` topics and any group; bob
/// may use anything the policy can grant (the gateway's own topics stay out of his reach); root is
/// an admin.
const POLICY: &str = r#"
[[rules]]
who = ["alice", "svc-orders", "app-1"]
allow = ["produce", "consume", "describe"]
topics = ["orders*"]

[[rules]]
who = ["alice", "svc-orders", "app-1"]
allow = ["join_group", "commit"]
groups = ["*"]

[[rules]]
who = ["bob"]
allow = ["all"]
topics = ["*"]
groups = ["*"]
"#;

fn proton(mode: &str, address: &str, gateway: &Gateway, extra: &[&str]) -> TestResult {
    let args = [&[mode, "--address", address][..], extra].concat();
    let stdout = run_python("auth_amqp_test.py", &args, gateway)?;
    assert!(stdout.contains("all checks passed"), "{stdout}");
    Ok(())
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn amqp_clients_are_authenticated_and_their_links_authorized() -> TestResult {
    let _serial = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;

    let users = dir.path().join("users");
    let lines = [
        courier_gateway::auth::users_file_line("alice", "s3cret", &[])?,
        courier_gateway::auth::users_file_line("bob", "hunter2", &[])?,
        courier_gateway::auth::users_file_line("root", "t0p", &["admin".to_owned()])?,
    ];
    std::fs::write(&users, lines.join("\n") + "\n")?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY)?;
    let issuer = TokenIssuer::new("k1")?;
    let jwks = TokenIssuer::write_jwks(dir.path(), "jwks.json", &[&issuer])?;
    let token = issuer.token(&Claims::for_subject("svc-orders"))?;
    let mut pki = TestPki::new(dir.path(), "amqp")?;
    let server = pki.server("server", &["localhost", "127.0.0.1"])?;
    let client = pki.client("client", "app-1", Validity::Now)?;

    let config = format!(
        "[log]\nkind = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\n\
         replication_factor = 1\nsession_timeout = \"6s\"\n\
         [log.producer_properties]\n\"batch.num.messages\" = \"1\"\n\
         [auth]\nusers_file = \"{users}\"\npolicy_file = \"{policy}\"\n\
         [auth.jwt]\njwks_file = \"{jwks}\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n\
         [amqp.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         client_ca = \"{ca}\"\nclient_auth = \"optional\"\n",
        bootstrap = broker.bootstrap(),
        users = path(&users),
        policy = path(&policy),
        jwks = path(&jwks),
        cert = path(&server.cert),
        key = path(&server.key),
        ca = path(pki.ca()),
    );
    let gateway = Gateway::start_with_config(
        &dir.path().join("gateway"),
        &config,
        &[("RUST_LOG", "info,courier_amqp=debug")],
    )?;
    let amqp = gateway.amqp.to_string();
    let orders = unique("orders");

    // PLAIN with a user's password, and with a JWT as the password.
    proton(
        "plain",
        &amqp,
        &gateway,
        &[
            "--user",
            "alice",
            "--password",
            "s3cret",
            "--topic",
            &orders,
        ],
    )?;
    proton(
        "plain",
        &amqp,
        &gateway,
        &["--user", "token", "--password", &token, "--topic", &orders],
    )?;
    proton(
        "plain",
        &amqp,
        &gateway,
        &["--user", "alice", "--password", "wrong", "--refused"],
    )?;
    // ANONYMOUS is not offered once users are configured, and skipping SASL is refused.
    proton("anonymous-refused", &amqp, &gateway, &[])?;

    // EXTERNAL on the AMQPS listener: the certificate's name (app-1) is the principal.
    let amqps = format!("localhost:{}", gateway.listener("amqps")?.port());
    let (ca, cert, key) = (path(pki.ca()), path(&client.cert), path(&client.key));
    proton(
        "external",
        &amqps,
        &gateway,
        &[
            "--ca", &ca, "--cert", &cert, "--key", &key, "--topic", &orders,
        ],
    )?;

    // The policy: alice may not use `payments-*`; the admin put one record there first, and Kafka
    // holds that one only after alice's refused attaches.
    let payments = unique("payments");
    proton(
        "admin-put",
        &amqp,
        &gateway,
        &["--user", "root", "--password", "t0p", "--topic", &payments],
    )?;
    proton(
        "policy",
        &amqp,
        &gateway,
        &[
            "--user",
            "alice",
            "--password",
            "s3cret",
            "--denied",
            &payments,
            "--bootstrap",
            &broker.bootstrap(),
        ],
    )?;
    // The gateway's own state, refused even to a principal the policy allows everything.
    proton(
        "internal",
        &amqp,
        &gateway,
        &["--user", "bob", "--password", "hunter2"],
    )?;

    // Each refusal is an audit event naming who was refused what.
    let audited = |line: &str| {
        line.contains("courier::audit")
            && line.contains("alice")
            && line.contains("produce")
            && line.contains(&payments)
    };
    let log = gateway.log_once(audited);
    assert!(
        log.lines().any(audited),
        "no audit line for alice's denied attach:\n{log}"
    );
    let (_, metrics) = scrape::get(gateway.http, "/metrics")
        .map_err(|error| format!("scraping {}: {error}", gateway.http))?;
    for series in [
        "courier_auth_failures_total{protocol=\"amqp\",reason=\"bad_credentials\"}",
        "courier_auth_denied_total{protocol=\"amqp\",action=\"produce\"}",
        "courier_auth_denied_total{protocol=\"amqp\",action=\"consume\"}",
    ] {
        assert!(
            scrape::series(&metrics, series).is_some_and(|count| count >= 1.0),
            "{series} not counted:\n{metrics}"
        );
    }
    assert!(gateway.terminate()?.success());
    Ok(())
}

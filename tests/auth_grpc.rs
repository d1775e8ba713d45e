//! Who may call the gRPC API and what they may do, on the real binary: Basic and Bearer
//! credentials, refusals with their reasons, a policy that keeps clients to their topics (and
//! nothing refused reaches Kafka), the admin role for Admin and reflection, the gateway's own state
//! out of reach, a JWKS rotated behind a URL, the `courier` CLI's credentials, users and policy
//! files changed under an open channel, and a stream ended when its token expires.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use common::*;
use courier_gateway::auth::users_file_line;
use courier_grpc::proto::v1 as pb;
use courier_testkit::{
    Tansu,
    identity::{AUDIENCE, Claims, ISSUER, TokenIssuer},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::{Code, Request};

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `message` with `authorization` metadata.
fn with_auth<T>(message: T, authorization: &str) -> Result<Request<T>, BoxError> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", authorization.parse()?);
    Ok(request)
}

fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// The users: alice (no roles) and root (admin).
fn write_users(dir: &Path) -> Result<PathBuf, BoxError> {
    let path = dir.join("users");
    std::fs::write(
        &path,
        [
            users_file_line("alice", "alice-pw", &[])?,
            users_file_line("root", "root-pw", &["admin".to_owned()])?,
        ]
        .join("\n"),
    )?;
    Ok(path)
}

/// alice and the token subject svc may use every topic and group but `secret-*`.
const POLICY: &str = r#"
[[rules]]
who = ["alice", "svc"]
deny = ["produce", "consume"]
topics = ["secret-*"]

[[rules]]
who = ["alice", "svc"]
allow = ["all"]
topics = ["*"]
groups = ["*"]
"#;

fn auth_config(users: &Path, policy: &Path, jwt: &str) -> String {
    format!(
        "[auth]\nusers_file = {}\npolicy_file = {}\nreload_interval = \"200ms\"\n\
         [auth.jwt]\n{jwt}issuer = {ISSUER:?}\naudience = {AUDIENCE:?}\n",
        toml_path(users),
        toml_path(policy),
    )
}

fn proto_dir() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("proto")
        .display()
        .to_string()
}

/// A grpcio client (generated from the .proto) against a gateway in front of Kafka: accepted,
/// unauthenticated, denied by the policy, the admin role, the internal state; and Kafka itself
/// holds only what was accepted.
#[test]
fn grpcio_client_under_users_tokens_and_a_policy() -> TestResult {
    let _one = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let users = write_users(dir.path())?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY)?;
    let issuer = TokenIssuer::new("k1")?;
    let stranger = TokenIssuer::new("k-unknown")?;
    let jwks = TokenIssuer::write_jwks(dir.path(), "jwks.json", &[&issuer])?;

    let bootstrap = broker.bootstrap();
    let config = format!(
        "[log]\nkind = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\nreplication_factor = 1\n\
         session_timeout = \"6s\"\n[log.producer_properties]\n\"batch.num.messages\" = \"1\"\n{}",
        auth_config(
            &users,
            &policy,
            &format!("jwks_file = {}\n", toml_path(&jwks))
        )
    );
    let gateway = Gateway::start_with_config(&dir.path().join("gateway"), &config, &[])?;

    let credentials = serde_json::json!({
        "user": "alice", "password": "alice-pw",
        "admin_user": "root", "admin_password": "root-pw",
        "tokens": {
            "valid": issuer.token(&Claims::for_subject("svc"))?,
            "admin": issuer.token(&Claims::for_subject("ops-bot").with_roles(&["admin"]))?,
            "expired": issuer.token(&Claims { expires_in: -3600, ..Claims::for_subject("svc") })?,
            "wrong_audience": issuer.token(&Claims { audience: "someone-else".into(), ..Claims::for_subject("svc") })?,
            "unknown_key": stranger.token(&Claims::for_subject("svc"))?,
        },
    });
    let credentials_file = dir.path().join("credentials.json");
    std::fs::write(&credentials_file, credentials.to_string())?;

    let server = gateway.grpc.to_string();
    let stdout = run_python(
        "auth_grpc_test.py",
        &[
            "--server",
            &server,
            "--proto",
            &proto_dir(),
            "--bootstrap",
            &bootstrap,
            "--credentials",
            &credentials_file.display().to_string(),
        ],
        &gateway,
    )?;
    assert!(stdout.contains("auth checks passed"), "{stdout}");
    let log = gateway.log_once(|line| line.contains("event=\"admin\""));
    assert!(
        log.contains("courier::audit") && log.contains("event=\"admin\""),
        "Admin calls are audit events"
    );
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// What a tiny JWKS endpoint serves: a document, or a failure.
#[derive(Clone)]
enum Jwks {
    Serving(String),
    Failing,
}

/// A JWKS endpoint on loopback, answering HTTP/1.1 with whatever `state` holds now.
async fn serve_jwks(
    state: Arc<Mutex<Jwks>>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                // One request per connection; its head fits in one read for this client.
                let mut head = vec![0; 8192];
                if socket.read(&mut head).await.is_err() {
                    return;
                }
                let current = state.lock().map(|s| s.clone()).unwrap_or(Jwks::Failing);
                let response = match current {
                    Jwks::Serving(body) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    Jwks::Failing => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
                };
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok((address, task))
}

/// The code of a unary Produce to `topic` as `authorization` on `client` (`Code::Ok` on success).
async fn produce_code(
    client: &mut pb::streams_client::StreamsClient<tonic::transport::Channel>,
    topic: &str,
    authorization: &str,
) -> Result<Code, BoxError> {
    let request = pb::ProduceRequest {
        topic: topic.into(),
        records: vec![record(None, "v")],
        request_id: 0,
    };
    Ok(
        match client.produce(with_auth(request, authorization)?).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        },
    )
}

/// Polls until a Produce answers `wanted`, within [`DEADLINE`].
async fn until_code(
    client: &mut pb::streams_client::StreamsClient<tonic::transport::Channel>,
    topic: &str,
    authorization: &str,
    wanted: Code,
    what: &str,
) -> TestResult {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let code = produce_code(client, topic, authorization).await?;
        if code == wanted {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: still {code:?}, wanted {wanted:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the gateway logs when a JWKS refresh fails and it keeps the keys it has.
const JWKS_REFRESH_FAILED: &str = "JWKS refresh failed; keeping the keys already loaded";

/// Polls the gateway's log until `needle` occurs at least `count` times, within [`DEADLINE`].
async fn until_logged(gateway: &Gateway, needle: &str, count: usize) -> TestResult {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let seen = gateway.log().matches(needle).count();
        if seen >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{needle:?} logged {seen} times, wanted {count}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A JWKS served over HTTP and rotated: a new key's tokens are accepted once the endpoint serves
/// it; when the endpoint then fails, and then is gone, the last good keys stay in use.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_jwks_url_is_followed_and_outlived() -> TestResult {
    let dir = tempfile::tempdir()?;
    let old = TokenIssuer::new("old")?;
    let new = TokenIssuer::new("new")?;
    let state = Arc::new(Mutex::new(Jwks::Serving(TokenIssuer::jwks(&[&old]))));
    let (jwks, endpoint) = serve_jwks(state.clone()).await?;
    let users = write_users(dir.path())?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY)?;
    let config = auth_config(
        &users,
        &policy,
        &format!("jwks_url = \"http://{jwks}/jwks.json\"\nrefresh = \"500ms\"\n"),
    );
    let data = dir.path().join("data").display().to_string();
    let gateway = Gateway::start_with_config(
        &dir.path().join("gateway"),
        &config,
        &[("COURIER_LOG__DATA_DIR", &data)],
    )?;
    let topic = unique("rotate");
    create_as_root(&gateway, &topic).await?;

    let mut client = gateway.streams().await?;
    let old_token = bearer(&old.token(&Claims::for_subject("svc"))?);
    let new_token = bearer(&new.token(&Claims::for_subject("svc"))?);
    assert_eq!(
        produce_code(&mut client, &topic, &old_token).await?,
        Code::Ok
    );
    assert_eq!(
        produce_code(&mut client, &topic, &new_token).await?,
        Code::Unauthenticated,
        "a key the JWKS does not hold yet"
    );

    *state.lock().map_err(|_| "poisoned")? = Jwks::Serving(TokenIssuer::jwks(&[&old, &new]));
    until_code(
        &mut client,
        &topic,
        &new_token,
        Code::Ok,
        "the new key once served",
    )
    .await?;

    // Failed refreshes, seen in the gateway's log (two, so that the first was handled in full
    // before the next read), leave the keys in use.
    let failed = JWKS_REFRESH_FAILED;
    let before = gateway.log().matches(failed).count();
    *state.lock().map_err(|_| "poisoned")? = Jwks::Failing;
    until_logged(&gateway, failed, before + 2).await?;
    assert_eq!(
        produce_code(&mut client, &topic, &new_token).await?,
        Code::Ok
    );
    assert_eq!(
        produce_code(&mut client, &topic, &old_token).await?,
        Code::Ok
    );
    let before = gateway.log().matches(failed).count();
    endpoint.abort();
    until_logged(&gateway, failed, before + 2).await?;
    assert_eq!(
        produce_code(&mut client, &topic, &new_token).await?,
        Code::Ok,
        "the endpoint gone, the last good keys stay"
    );
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// Creates `topic` (one partition) as the admin user `root`.
async fn create_as_root(gateway: &Gateway, topic: &str) -> TestResult {
    let mut admin = gateway.admin().await?;
    let create = pb::CreateTopicRequest {
        name: topic.to_owned(),
        partitions: 1,
        ..Default::default()
    };
    admin
        .create_topic(with_auth(create, &basic("root", "root-pw"))?)
        .await?;
    Ok(())
}

/// A gateway on the embedded log with the test's users, policy and a JWKS file of one key.
struct Policed {
    dir: tempfile::TempDir,
    users: PathBuf,
    policy: PathBuf,
    issuer: TokenIssuer,
    gateway: Gateway,
}

impl Policed {
    fn start() -> Result<Self, BoxError> {
        let dir = tempfile::tempdir()?;
        let users = write_users(dir.path())?;
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, POLICY)?;
        let issuer = TokenIssuer::new("k1")?;
        let jwks = TokenIssuer::write_jwks(dir.path(), "jwks.json", &[&issuer])?;
        // No leeway: a token's streams end at its `exp` exactly.
        let config = auth_config(
            &users,
            &policy,
            &format!("jwks_file = {}\nleeway = \"0s\"\n", toml_path(&jwks)),
        );
        let data = dir.path().join("data").display().to_string();
        let gateway = Gateway::start_with_config(
            &dir.path().join("gateway"),
            &config,
            &[("COURIER_LOG__DATA_DIR", &data)],
        )?;
        Ok(Self {
            dir,
            users,
            policy,
            issuer,
            gateway,
        })
    }
}

/// A Subscribe stream opened with a token ends with UNAUTHENTICATED when the token expires (the
/// client opens a new one with a fresh token); a stream opened with a password goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_tokens_stream_ends_when_the_token_expires() -> TestResult {
    let Policed {
        dir: _dir,
        issuer,
        gateway,
        ..
    } = Policed::start()?;
    let topic = unique("expiry");
    create_as_root(&gateway, &topic).await?;
    let short = bearer(&issuer.token(&Claims {
        expires_in: 8,
        ..Claims::for_subject("svc")
    })?);
    let mut client = gateway.streams().await?;
    let (_requests, mut with_token) = subscribe_as(&mut client, &topic, &short).await?;
    let alice = basic("alice", "alice-pw");
    let (_held, mut with_password) = subscribe_as(&mut client, &topic, &alice).await?;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match with_token.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await?
    .ok_or("the stream ended without a status")?;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("expired"), "{ended:?}");
    // The password's stream is still open: a record produced now reaches it.
    assert_eq!(produce_code(&mut client, &topic, &alice).await?, Code::Ok);
    let delivered = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match with_password.message().await? {
                Some(pb::SubscribeResponse {
                    kind: Some(pb::subscribe_response::Kind::Records(batch)),
                }) if !batch.records.is_empty() => return Ok::<_, tonic::Status>(true),
                Some(_) => {}
                None => return Ok(false),
            }
        }
    })
    .await??;
    assert!(delivered, "the password's stream ended");
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// A ProduceStream opened with a token, sending all along, ends with UNAUTHENTICATED when the token
/// expires; every request it answered with acks is stored, and nothing else is: what it did not
/// answer was not written (the client sends that again on a new stream).
#[tokio::test(flavor = "multi_thread")]
async fn a_tokens_produce_stream_answers_what_it_took_and_ends_when_the_token_expires() -> TestResult
{
    let Policed {
        dir: _dir,
        issuer,
        gateway,
        ..
    } = Policed::start()?;
    let topic = unique("expiry-produce");
    create_as_root(&gateway, &topic).await?;
    let token = bearer(&issuer.token(&Claims {
        expires_in: 8,
        ..Claims::for_subject("svc")
    })?);
    let mut client = gateway.streams().await?;
    let (requests, outbound) = tokio::sync::mpsc::channel(16);
    let request = with_auth(
        tokio_stream::wrappers::ReceiverStream::new(outbound),
        &token,
    )?;
    let mut responses = client.produce_stream(request).await?.into_inner();
    let sending = {
        let topic = topic.clone();
        tokio::spawn(async move {
            for request_id in 0.. {
                let request = pb::ProduceRequest {
                    topic: topic.clone(),
                    records: vec![record(None, &request_id.to_string())],
                    request_id,
                };
                if requests.send(request).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut acked = 0_i64;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match responses.message().await {
                Ok(Some(response)) if response.error.is_none() => acked += 1,
                Ok(Some(response)) => return Err(format!("a request failed: {response:?}")),
                Ok(None) => return Err("the stream ended without a status".to_owned()),
                Err(status) => return Ok(status),
            }
        }
    })
    .await??;
    sending.abort();
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(acked > 0, "nothing was answered before the token expired");
    let fetch = pb::FetchRequest {
        topic: topic.clone(),
        partition: 0,
        offset: 0,
        ..Default::default()
    };
    let stored = client
        .fetch(with_auth(fetch, &basic("root", "root-pw"))?)
        .await?
        .into_inner()
        .high_watermark;
    assert_eq!(stored, acked, "stored records against answered requests");
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// A Subscribe stream of `topic` (from its end) opened with `authorization`: the sender that keeps
/// the client's side open, and the responses.
async fn subscribe_as(
    client: &mut pb::streams_client::StreamsClient<tonic::transport::Channel>,
    topic: &str,
    authorization: &str,
) -> Result<
    (
        tokio::sync::mpsc::Sender<pb::SubscribeRequest>,
        tonic::Streaming<pb::SubscribeResponse>,
    ),
    BoxError,
> {
    let (requests, outbound) = tokio::sync::mpsc::channel(4);
    requests
        .send(pb::SubscribeRequest {
            kind: Some(pb::subscribe_request::Kind::Start(pb::SubscribeStart {
                topics: vec![topic.to_owned()],
                ..Default::default()
            })),
        })
        .await?;
    let request = with_auth(
        tokio_stream::wrappers::ReceiverStream::new(outbound),
        authorization,
    )?;
    let stream = client.subscribe(request).await?.into_inner();
    Ok((requests, stream))
}

/// The users file and the policy rewritten while a client holds its channel: its next calls
/// follow the new versions.
#[tokio::test(flavor = "multi_thread")]
async fn rewritten_users_and_policy_apply_to_an_open_channel() -> TestResult {
    // `_dir` holds the files (and the gateway's data) until the test ends.
    let Policed {
        dir: _dir,
        users,
        policy,
        gateway,
        ..
    } = Policed::start()?;
    let topic = unique("reload");
    create_as_root(&gateway, &topic).await?;

    let mut client = gateway.streams().await?;
    let alice = basic("alice", "alice-pw");
    assert_eq!(produce_code(&mut client, &topic, &alice).await?, Code::Ok);

    // The policy now denies alice the topic.
    std::fs::write(
        &policy,
        format!(
            "[[rules]]\nwho = [\"alice\"]\ndeny = [\"produce\"]\ntopics = [{topic:?}]\n{POLICY}"
        ),
    )?;
    until_code(
        &mut client,
        &topic,
        &alice,
        Code::PermissionDenied,
        "the new policy",
    )
    .await?;
    std::fs::write(&policy, POLICY)?;
    until_code(&mut client, &topic, &alice, Code::Ok, "the policy restored").await?;

    // alice's password changes: the old one stops working on the same channel, though it was
    // verified (and remembered) a moment ago.
    std::fs::write(
        &users,
        [
            users_file_line("alice", "new-pw", &[])?,
            users_file_line("root", "root-pw", &["admin".to_owned()])?,
        ]
        .join("\n"),
    )?;
    until_code(
        &mut client,
        &topic,
        &alice,
        Code::Unauthenticated,
        "the new users file",
    )
    .await?;
    assert_eq!(
        produce_code(&mut client, &topic, &basic("alice", "new-pw")).await?,
        Code::Ok
    );
    assert!(gateway.terminate()?.success());
    Ok(())
}

fn courier(gateway: &Gateway, args: &[&str], env: &[(&str, &str)]) -> Result<Output, BoxError> {
    let output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(args)
        .env("COURIER_SERVER", gateway.url())
        .env_remove("COURIER_TOKEN")
        .env_remove("COURIER_PASSWORD")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    Ok(output)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The `courier` client commands present a token (`--token`, `COURIER_TOKEN`) or a user (`--user`
/// with `COURIER_PASSWORD`); without credentials, or with too few rights, they say why.
#[test]
fn the_cli_presents_tokens_and_users() -> TestResult {
    let Policed {
        dir: _dir,
        issuer,
        gateway,
        ..
    } = Policed::start()?;
    let topic = unique("cli");
    let admin_token = issuer.token(&Claims::for_subject("ops-bot").with_roles(&["admin"]))?;

    let created = courier(
        &gateway,
        &["topics", "create", &topic, "--token", &admin_token],
        &[],
    )?;
    assert!(created.status.success(), "{created:?}");
    let listed = courier(
        &gateway,
        &["topics", "list"],
        &[("COURIER_TOKEN", &admin_token)],
    )?;
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&topic));
    let listed = courier(
        &gateway,
        &["topics", "list", "--user", "root"],
        &[("COURIER_PASSWORD", "root-pw")],
    )?;
    assert!(listed.status.success(), "{listed:?}");

    let produced = courier(
        &gateway,
        &["produce", &topic, "hello", "--user", "alice"],
        &[("COURIER_PASSWORD", "alice-pw")],
    )?;
    assert!(produced.status.success(), "{produced:?}");

    let anonymous = courier(&gateway, &["topics", "list"], &[])?;
    assert!(!anonymous.status.success());
    let message = stderr(&anonymous);
    assert!(
        message.contains("did not accept the credentials")
            && message.contains("credentials are required"),
        "{message}"
    );
    let wrong = courier(
        &gateway,
        &["topics", "list", "--user", "root"],
        &[("COURIER_PASSWORD", "guess")],
    )?;
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("bad user name or password"),
        "{}",
        stderr(&wrong)
    );
    let no_password = courier(&gateway, &["topics", "list", "--user", "root"], &[])?;
    assert!(!no_password.status.success());
    assert!(
        stderr(&no_password).contains("COURIER_PASSWORD"),
        "{}",
        stderr(&no_password)
    );

    let not_admin = courier(
        &gateway,
        &["topics", "list", "--user", "alice"],
        &[("COURIER_PASSWORD", "alice-pw")],
    )?;
    assert!(!not_admin.status.success());
    let message = stderr(&not_admin);
    assert!(
        message.contains("permission denied") && message.contains("admin role"),
        "{message}"
    );
    assert!(gateway.terminate()?.success());
    Ok(())
}

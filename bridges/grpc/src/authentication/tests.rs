use std::{convert::Infallible, net::SocketAddr};

use base64::Engine as _;
use courier_gateway::auth::{Access, Auth, AuthConfig, Protected, jwt::JwtConfig, users_file_line};
use courier_testkit::identity::{Claims, TokenIssuer};
use tokio_util::sync::CancellationToken;
use tower::{Layer as _, ServiceExt as _};

use super::*;

/// What the service behind the layer answers: the caller's name, in a header.
const CALLER: &str = "x-caller";

/// A call to `path` from `peer` with `authorization`, answered by a service that names the caller.
async fn call(
    layer: &AuthenticationLayer,
    path: &str,
    peer: &str,
    authorization: Option<&str>,
) -> http::Response<String> {
    let service = layer.layer(tower::service_fn(|request: http::Request<()>| async move {
        let mut response = http::Response::new(String::new());
        if let Some(principal) = request.extensions().get::<Principal>() {
            let name = http::HeaderValue::from_str(&principal.name).unwrap();
            response.headers_mut().insert(CALLER, name);
        }
        Ok::<_, Infallible>(response)
    }));
    let mut request = http::Request::builder().uri(format!("http://gateway{path}"));
    if let Some(authorization) = authorization {
        request = request.header(http::header::AUTHORIZATION, authorization);
    }
    let mut request = request.body(()).unwrap();
    request.extensions_mut().insert(Peer {
        address: Some(peer.parse::<SocketAddr>().unwrap()),
        certificate: None,
    });
    service.oneshot(request).await.unwrap()
}

fn caller(response: &http::Response<String>) -> Option<&str> {
    response.headers().get(CALLER).map(|v| v.to_str().unwrap())
}

fn grpc_status(response: &http::Response<String>) -> Option<tonic::Code> {
    Status::from_header_map(response.headers()).map(|status| status.code())
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

const STREAMS: &str = "/courier.v1.Streams/Produce";
const REMOTE: &str = "192.0.2.7:40000";

struct Configured {
    layer: AuthenticationLayer,
    issuer: TokenIssuer,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for Configured {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A layer over a users file with alice (password "secret") and tokens of one issuer.
async fn configured() -> Configured {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        users_file_line("alice", "secret", &["ops".to_owned()]).unwrap(),
    )
    .unwrap();
    let issuer = TokenIssuer::new("k1").unwrap();
    let jwks = TokenIssuer::write_jwks(dir.path(), "jwks.json", &[&issuer]).unwrap();
    let config = AuthConfig {
        users_file: Some(users),
        jwt: Some(JwtConfig::with_file(jwks)),
        hashing_threads: 1,
        ..AuthConfig::default()
    };
    let stop = CancellationToken::new();
    let auth = Auth::start(&config, Protected::new([]), &[], stop.clone())
        .await
        .unwrap();
    Configured {
        layer: AuthenticationLayer::new(auth.authenticator("grpc", None)),
        issuer,
        _dir: dir,
        stop,
    }
}

#[tokio::test]
async fn health_checks_need_no_credentials() {
    let layer = configured().await;
    let response = call(&layer.layer, "/grpc.health.v1.Health/Check", REMOTE, None).await;
    assert_eq!(grpc_status(&response), None);
}

#[tokio::test]
async fn calls_without_credentials_are_unauthenticated() {
    let layer = configured().await;
    let response = call(&layer.layer, STREAMS, REMOTE, None).await;
    assert_eq!(grpc_status(&response), Some(tonic::Code::Unauthenticated));
    assert_eq!(caller(&response), None);
}

#[tokio::test]
async fn basic_credentials_name_the_caller() {
    let layer = configured().await;
    let right = basic("alice", "secret");
    let response = call(&layer.layer, STREAMS, REMOTE, Some(&right)).await;
    assert_eq!(caller(&response), Some("alice"));
    // Again: from the cache, the same principal.
    let response = call(&layer.layer, STREAMS, REMOTE, Some(&right)).await;
    assert_eq!(caller(&response), Some("alice"));

    let wrong = basic("alice", "guess");
    let response = call(&layer.layer, STREAMS, REMOTE, Some(&wrong)).await;
    assert_eq!(grpc_status(&response), Some(tonic::Code::Unauthenticated));
    assert_eq!(caller(&response), None);
}

#[tokio::test]
async fn bearer_tokens_name_the_caller() {
    let layer = configured().await;
    let token = layer
        .issuer
        .token(&Claims::for_subject("svc").with_roles(&["admin"]))
        .unwrap();
    let response = call(
        &layer.layer,
        STREAMS,
        REMOTE,
        Some(&format!("Bearer {token}")),
    )
    .await;
    assert_eq!(caller(&response), Some("svc"));

    let expired = layer
        .issuer
        .token(&Claims {
            expires_in: -3600,
            ..Claims::for_subject("svc")
        })
        .unwrap();
    let response = call(
        &layer.layer,
        STREAMS,
        REMOTE,
        Some(&format!("Bearer {expired}")),
    )
    .await;
    assert_eq!(grpc_status(&response), Some(tonic::Code::Unauthenticated));
}

#[tokio::test]
async fn malformed_authorization_is_unauthenticated() {
    let layer = configured().await;
    let response = call(&layer.layer, STREAMS, REMOTE, Some("Digest abc")).await;
    let status = Status::from_header_map(response.headers()).unwrap();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("Basic"), "{status:?}");
}

#[tokio::test]
async fn without_configuration_only_loopback_is_served() {
    let layer =
        AuthenticationLayer::new(Access::loopback("grpc", Protected::new([])).authenticator);
    let response = call(&layer, STREAMS, "127.0.0.1:40000", None).await;
    assert_eq!(caller(&response), Some("anonymous"));
    let response = call(&layer, STREAMS, REMOTE, None).await;
    let status = Status::from_header_map(response.headers()).unwrap();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("loopback"), "{status:?}");
}

#[test]
fn a_busy_hashing_pool_is_unavailable_and_the_rest_unauthenticated() {
    assert_eq!(refusal(Failure::Busy).code(), tonic::Code::Unavailable);
    assert_eq!(
        refusal(Failure::Throttled).code(),
        tonic::Code::ResourceExhausted
    );
    assert_eq!(
        refusal(Failure::BadCredentials).code(),
        tonic::Code::Unauthenticated
    );
}

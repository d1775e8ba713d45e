//! Authentication's secure defaults and the operators' HTTP endpoint, on the real binary: with
//! nothing configured only loopback clients are served (and the ready line says so); once users are
//! configured the status page wants the admin role, while the probes and `/metrics` stay open for
//! kubelets and scrapers, and every refusal is counted.

mod common;

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use common::{scrape::*, *};
use courier_gateway::auth::users_file_line;

/// One GET with an `authorization` header: status, `WWW-Authenticate`, body.
fn get_as(
    http: std::net::SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> Result<(u16, Option<String>, String), BoxError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut request = agent.get(&format!("http://{http}{path}"));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let mut response = request.call()?;
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let status = response.status().as_u16();
    Ok((status, challenge, response.body_mut().read_to_string()?))
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

#[test]
fn with_nothing_configured_only_loopback_clients_are_served_and_the_ready_line_says_so()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(&dir.path().join("data"), &[])?;
    assert!(
        gateway.ready.contains(" anonymous=loopback"),
        "{}",
        gateway.ready
    );
    let why = "clients without credentials are served only from loopback addresses";
    assert!(
        gateway.log_once(|line| line.contains(why)).contains(why),
        "the log says why others are refused"
    );
    // Loopback operators see the status page without credentials.
    let (status, _, _) = get_as(gateway.http, "/api/status", None)?;
    assert_eq!(status, 200);
    Ok(())
}

#[test]
fn the_status_page_wants_an_admin_once_users_are_configured() -> TestResult {
    let dir = tempfile::tempdir()?;
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        [
            users_file_line("ops", "root-pw", &["admin".to_owned()])?,
            users_file_line("alice", "s3cret", &[])?,
        ]
        .join("\n"),
    )?;
    let config = format!(
        "[auth]\nusers_file = {:?}\nreload_interval = \"100ms\"\n",
        users.display().to_string()
    );
    let gateway = Gateway::start_with_config(&dir.path().join("gw"), &config, &[])?;
    assert!(gateway.ready.contains(" anonymous=no"), "{}", gateway.ready);

    for path in ["/", "/api/status"] {
        let (status, challenge, _) = get_as(gateway.http, path, None)?;
        assert_eq!(status, 401, "{path} without credentials");
        assert_eq!(
            challenge.as_deref(),
            Some("Basic realm=\"courier\", charset=\"UTF-8\""),
            "a browser is asked for a user"
        );
        let (status, _, _) = get_as(gateway.http, path, Some(&basic("ops", "wrong")))?;
        assert_eq!(status, 401, "{path} with a wrong password");
        let (status, _, body) = get_as(gateway.http, path, Some(&basic("alice", "s3cret")))?;
        assert_eq!(status, 403, "{path} for a user without the admin role");
        assert!(
            body.contains("alice does not have the admin role"),
            "{body}"
        );
        let (status, _, _) = get_as(gateway.http, path, Some(&basic("ops", "root-pw")))?;
        assert_eq!(status, 200, "{path} for an admin");
    }
    let (status, _, _) = get_as(gateway.http, "/api/status", Some("Digest abc"))?;
    assert_eq!(status, 400, "neither Basic nor Bearer");

    // Probes and metrics stay open.
    assert_eq!(get(gateway.http, "/readyz")?.0, 200);
    assert_eq!(get(gateway.http, "/healthz")?.0, 200);
    let (status, metrics) = get(gateway.http, "/metrics")?;
    assert_eq!(status, 200);
    // 2 paths without credentials, 2 with a wrong password.
    assert_eq!(
        series(
            &metrics,
            "courier_auth_failures_total{protocol=\"http\",reason=\"anonymous_refused\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        series(
            &metrics,
            "courier_auth_failures_total{protocol=\"http\",reason=\"bad_credentials\"}"
        ),
        Some(2.0)
    );
    assert!(
        gateway
            .log_once(|line| line.contains("courier::audit"))
            .contains("courier::audit"),
        "refusals are audit events"
    );

    // A user added to the file is let in without a restart.
    let mut lines = std::fs::read_to_string(&users)?;
    lines.push('\n');
    lines.push_str(&users_file_line("olga", "new-pw", &["admin".to_owned()])?);
    std::fs::write(&users, lines)?;
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let (status, _, _) = get_as(gateway.http, "/api/status", Some(&basic("olga", "new-pw")))?;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new user was never let in"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

//! What the client commands present to the gateway: a JWT (`--token`, or `COURIER_TOKEN`), or a
//! user of its users file (`--user`, with the password in `COURIER_PASSWORD`: never a flag, which
//! would show in `ps`), sent as `authorization` metadata on every call; and the gateway's
//! refusals, said plainly.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use super::ServerArgs;

/// The environment variable that holds `--user`'s password.
pub const PASSWORD_ENV: &str = "COURIER_PASSWORD";

/// A channel whose every call carries the credentials.
pub(crate) type Api = InterceptedService<Channel, Credentials>;

/// The `authorization` metadata of every call, if any.
#[derive(Debug, Clone, Default)]
pub(crate) struct Credentials(Option<MetadataValue<Ascii>>);

impl Credentials {
    /// What `server` names: a token, a user (with the password from [`PASSWORD_ENV`]), or nothing.
    pub(crate) fn from_args(server: &ServerArgs) -> Result<Self> {
        if let Some(token) = &server.token {
            return Self::header(&format!("Bearer {}", token.trim()))
                .context("--token (COURIER_TOKEN) is not a valid token");
        }
        if let Some(user) = &server.user {
            let password = std::env::var(PASSWORD_ENV).with_context(|| {
                format!("--user {user}: set the password in {PASSWORD_ENV} (it is never a flag: flags show in `ps`)")
            })?;
            return Self::basic(user, &password);
        }
        Ok(Self::default())
    }

    /// `user` and `password` as `authorization: Basic`.
    pub(crate) fn basic(user: &str, password: &str) -> Result<Self> {
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Self::header(&format!("Basic {pair}"))
    }

    fn header(text: &str) -> Result<Self> {
        let Ok(mut value) = MetadataValue::try_from(text) else {
            bail!("credentials must be printable ASCII");
        };
        // Kept out of debug output.
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }

    /// `channel`, sending these credentials on every call.
    pub(crate) fn on(self, channel: Channel) -> Api {
        InterceptedService::new(channel, self)
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A failed call as the person at the terminal should read it: the gateway's own message, and what
/// to do about a refusal.
pub(crate) fn refused(status: Status) -> anyhow::Error {
    let message = status.message();
    match status.code() {
        Code::Unauthenticated => anyhow::anyhow!(
            "the gateway did not accept the credentials: {message} (pass --token or COURIER_TOKEN, or --user with the password in {PASSWORD_ENV})"
        ),
        Code::PermissionDenied => anyhow::anyhow!("permission denied: {message}"),
        code => anyhow::anyhow!("{message} ({code:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_kept_out_of_debug_output() {
        // "alice:s3cret"
        let basic = Credentials::basic("alice", "s3cret").unwrap();
        let bearer = Credentials::header("Bearer eyJhbGciOi.secret.sig").unwrap();
        for shown in [format!("{basic:?}"), format!("{bearer:?}")] {
            assert!(
                !shown.contains("YWxpY2U6czNjcmV0") && !shown.contains("secret"),
                "{shown}"
            );
        }
    }
}

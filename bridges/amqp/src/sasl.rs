//! SASL for AMQP connections: ANONYMOUS (when allowed) and PLAIN, checked against the users file the
//! gateway shares with MQTT ([`courier_gateway::auth`]).

use courier_gateway::auth::{Auth, Verdict};
use fe2o3_amqp::{
    acceptor::{SaslAcceptor, sasl_acceptor::SaslServerFrame},
    types::{
        primitives::{Array, Symbol},
        sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse},
    },
};

const ANONYMOUS: &str = "ANONYMOUS";
const PLAIN: &str = "PLAIN";

/// The gateway's SASL mechanisms, over its users.
#[derive(Debug, Clone)]
pub struct Mechanisms {
    auth: Auth,
}

impl Mechanisms {
    /// Mechanisms for `auth`: PLAIN when there are users to check, ANONYMOUS when allowed.
    pub fn new(auth: Auth) -> Self {
        Self { auth }
    }

    fn verdict(&self, init: SaslInit) -> Verdict {
        match init.mechanism.as_str() {
            ANONYMOUS => self.auth.check_blocking(None),
            PLAIN => {
                let Some(login) = init
                    .initial_response
                    .as_deref()
                    .and_then(|response| plain_login(response))
                else {
                    return Verdict::BadCredentials;
                };
                // Hash verification is slow on purpose; let the runtime move other tasks away.
                tokio::task::block_in_place(|| self.auth.check_blocking(Some(login)))
            }
            _ => Verdict::BadCredentials,
        }
    }
}

/// `[authzid] NUL authcid NUL passwd` (RFC 4616).
fn plain_login(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|byte| *byte == 0);
    let _authorization = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    Some((user.to_owned(), password.to_owned()))
}

impl SaslAcceptor for Mechanisms {
    fn mechanisms(&self) -> Array<Symbol> {
        let mut offered = Vec::new();
        if self.auth.has_users() {
            offered.push(Symbol::from(PLAIN));
        }
        if self.auth.allows_anonymous() {
            offered.push(Symbol::from(ANONYMOUS));
        }
        Array::from(offered)
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let mechanism = init.mechanism.0.clone();
        let verdict = self.verdict(init);
        if verdict != Verdict::Allowed {
            tracing::info!(%mechanism, ?verdict, "AMQP SASL refused");
        }
        SaslServerFrame::Outcome(SaslOutcome {
            code: match verdict {
                Verdict::Allowed => SaslCode::Ok,
                Verdict::AnonymousRefused | Verdict::BadCredentials => SaslCode::Auth,
            },
            additional_data: None,
        })
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // Neither mechanism sends a challenge, so a response is out of turn.
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Auth,
            additional_data: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::plain_login;

    #[test]
    fn plain_responses_split_into_user_and_password() {
        assert_eq!(
            plain_login(b"\0alice\0s3cret"),
            Some(("alice".into(), "s3cret".into()))
        );
        assert_eq!(
            plain_login(b"admin\0alice\0s3cret"),
            Some(("alice".into(), "s3cret".into()))
        );
        assert_eq!(plain_login(b"\0\0pw"), None);
        assert_eq!(plain_login(b"alice"), None);
        assert_eq!(plain_login(b"\0a\0b\0c"), None);
    }
}

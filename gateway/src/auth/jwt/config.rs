//! `[auth.jwt]`: where the keys come from and what a token must claim.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// `[auth.jwt]`: JWT bearer tokens, verified against a JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// A JWKS JSON file (`{"keys": [...]}`), re-read every `refresh`. Set this or `jwks_url`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// An identity provider's JWKS endpoint (`http://` or `https://`, e.g. Keycloak's
    /// `.../protocol/openid-connect/certs`), fetched every `refresh`. Set this or `jwks_file`.
    /// HTTPS trusts the system's root certificates.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// When set, a token's `iss` must be exactly this.
    #[serde(default)]
    pub issuer: Option<String>,
    /// When set, a token's `aud` (a string or an array) must contain this.
    #[serde(default)]
    pub audience: Option<String>,
    /// The claim that names the principal: a top-level claim (`preferred_username`, or one with
    /// dots in its name such as `https://example.com/user`), else a dotted path into nested
    /// objects (`user.name`).
    #[serde(default = "JwtConfig::default_name_claim")]
    pub name_claim: String,
    /// The claim that holds the principal's roles, found as `name_claim` is (e.g.
    /// `realm_access.roles` for Keycloak): an array of strings, or one space-separated string
    /// (as `scope` is). Missing: no roles.
    #[serde(default = "JwtConfig::default_roles_claim")]
    pub roles_claim: String,
    /// How often the JWKS is re-read. A token with an unknown key id also asks for an early
    /// read, at most once per 30 seconds.
    #[serde(default = "JwtConfig::default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// Clock skew allowed when checking `exp` and `nbf`.
    #[serde(default = "JwtConfig::default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
}

impl JwtConfig {
    fn default_name_claim() -> String {
        "sub".into()
    }

    fn default_roles_claim() -> String {
        "roles".into()
    }

    fn default_refresh() -> Duration {
        Duration::from_secs(5 * 60)
    }

    fn default_leeway() -> Duration {
        Duration::from_secs(30)
    }

    /// A config reading keys from `jwks_file`, every other key at its default.
    pub fn with_file(jwks_file: impl Into<PathBuf>) -> Self {
        Self {
            jwks_file: Some(jwks_file.into()),
            jwks_url: None,
            issuer: None,
            audience: None,
            name_claim: Self::default_name_claim(),
            roles_claim: Self::default_roles_claim(),
            refresh: Self::default_refresh(),
            leeway: Self::default_leeway(),
        }
    }

    /// What the types cannot check; the message names the key (`auth.jwt.…`).
    pub fn validate(&self) -> Result<(), String> {
        match (&self.jwks_file, &self.jwks_url) {
            (Some(_), Some(_)) => {
                return Err(
                    "auth.jwt.jwks_file and auth.jwt.jwks_url are both set; set one".into(),
                );
            }
            (None, None) => {
                return Err("auth.jwt.jwks_file or auth.jwt.jwks_url must be set".into());
            }
            (None, Some(url)) => super::fetch::Target::parse(url)
                .map(drop)
                .map_err(|reason| format!("auth.jwt.jwks_url {url:?}: {reason}"))?,
            (Some(_), None) => {}
        }
        for (key, path) in [
            ("name_claim", &self.name_claim),
            ("roles_claim", &self.roles_claim),
        ] {
            if path.is_empty() {
                return Err(format!("auth.jwt.{key} may not be empty"));
            }
        }
        for (key, value) in [("issuer", &self.issuer), ("audience", &self.audience)] {
            if value.as_deref() == Some("") {
                return Err(format!("auth.jwt.{key} may not be empty; leave it unset"));
            }
        }
        if self.refresh.is_zero() {
            return Err("auth.jwt.refresh must be more than 0s".into());
        }
        Ok(())
    }
}

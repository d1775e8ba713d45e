//! A verified token's claims: whether they hold now (`exp`, `nbf`, `iss`, `aud`), and the
//! principal they name.
//!
//! Registered claims are read strictly: an `exp` or `nbf` that is present but not a number refuses
//! the token, never counts as absent (jsonwebtoken before 10.3 treated a string `nbf` as missing,
//! CVE-2026-25537; these checks are our own).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::{config::JwtConfig, errors::JwtRefusal};
use crate::auth::principal::{Principal, Source};

type Claims = Map<String, Value>;

/// The checks and claim names of one `[auth.jwt]`.
#[derive(Debug)]
pub(super) struct Rules {
    issuer: Option<String>,
    audience: Option<String>,
    name_claim: String,
    roles_claim: String,
    leeway: Duration,
}

impl Rules {
    pub(super) fn from_config(config: &JwtConfig) -> Self {
        Self {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            name_claim: config.name_claim.clone(),
            roles_claim: config.roles_claim.clone(),
            leeway: config.leeway,
        }
    }

    /// Whether `claims` hold at `now`: `exp` (required) and `nbf` with the leeway, then the
    /// issuer and audience when configured.
    pub(super) fn check(&self, claims: &Claims, now: SystemTime) -> Result<(), JwtRefusal> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let leeway = self.leeway.as_secs_f64();
        let expires = numeric_date(claims, "exp")?.ok_or(JwtRefusal::Malformed)?;
        if now - leeway >= expires {
            return Err(JwtRefusal::Expired);
        }
        if let Some(not_before) = numeric_date(claims, "nbf")?
            && now + leeway < not_before
        {
            return Err(JwtRefusal::NotYetValid);
        }
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer)
        {
            return Err(JwtRefusal::WrongIssuer);
        }
        if let Some(audience) = &self.audience {
            let accepted = match claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(audience)),
                _ => false,
            };
            if !accepted {
                return Err(JwtRefusal::WrongAudience);
            }
        }
        Ok(())
    }

    /// The principal `claims` name, with `key_id` (the key that verified them) among its
    /// attributes.
    pub(super) fn principal(
        &self,
        claims: &Claims,
        key_id: Option<&str>,
    ) -> Result<Principal, JwtRefusal> {
        let name = match lookup(claims, &self.name_claim) {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            Some(Value::Number(id)) if id.is_i64() || id.is_u64() => id.to_string(),
            _ => return Err(JwtRefusal::NoName),
        };
        let roles = match lookup(claims, &self.roles_claim) {
            Some(Value::Array(roles)) => roles
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(roles)) => roles.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let mut principal = Principal::new(name, roles, Source::Token);
        let attributes = &mut principal.attributes;
        if let Some(issuer) = claims.get("iss").and_then(Value::as_str) {
            attributes.insert("issuer".into(), issuer.into());
        }
        if let Some(subject) = claims.get("sub").and_then(Value::as_str) {
            attributes.insert("subject".into(), subject.into());
        }
        if let Ok(Some(expires)) = numeric_date(claims, "exp") {
            // Whole seconds: NumericDate may carry a fraction, the attribute need not.
            attributes.insert("expires".into(), (expires.floor() as i64).to_string());
            // Accepted until `exp` plus the leeway, as `check` does. An `exp` beyond what the
            // clock holds (`check` passed, so it is not in the past) is as good as never: a year,
            // the longest `Principal::remaining` counts down.
            let far = || SystemTime::now().checked_add(Duration::from_secs(365 * 24 * 3600));
            principal.valid_until = Duration::try_from_secs_f64(expires)
                .ok()
                .and_then(|since_epoch| since_epoch.checked_add(self.leeway))
                .and_then(|since_epoch| UNIX_EPOCH.checked_add(since_epoch))
                .or_else(far);
        }
        if let Some(key_id) = key_id {
            attributes.insert("key_id".into(), key_id.into());
        }
        Ok(principal)
    }
}

/// A NumericDate claim (seconds since the epoch): absent, a number, or a malformed token.
fn numeric_date(claims: &Claims, name: &str) -> Result<Option<f64>, JwtRefusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value.as_f64().map(Some).ok_or(JwtRefusal::Malformed),
    }
}

/// The claim at `path`: a top-level claim of that exact name first (names such as
/// `https://example.com/roles` have dots of their own), else the dotted path through nested
/// objects.
pub(super) fn lookup<'a>(claims: &'a Claims, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut segments = path.split('.');
    let first = claims.get(segments.next()?)?;
    segments.try_fold(first, |value, segment| value.as_object()?.get(segment))
}

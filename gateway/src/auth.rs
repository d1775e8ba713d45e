//! Who may connect: anonymous clients (when allowed) and the users of a file of argon2 password hashes.
//! Shared by the front ends that take a username and password (MQTT CONNECT, AMQP SASL PLAIN), so one
//! users file serves them all.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use argon2::{
    Argon2,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng},
};

use serde::{Deserialize, Serialize};

/// `[<protocol>.auth]`: username/password checking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Let clients connect without a username.
    #[serde(default = "AuthConfig::default_allow_anonymous")]
    pub allow_anonymous: bool,
    /// File of users, one `name:PHC-hash` per line (argon2; `courier passwd NAME` prints one). Unset: no
    /// client may present a username.
    #[serde(default)]
    pub users_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: Self::default_allow_anonymous(),
            users_file: None,
        }
    }
}

impl AuthConfig {
    fn default_allow_anonymous() -> bool {
        true
    }
}

/// The users file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the users file {path}: {detail}")]
pub struct UsersFileError {
    /// The file.
    pub path: String,
    /// What was wrong.
    pub detail: String,
}

/// The answer to a client's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let the client in.
    Allowed,
    /// No username, and anonymous clients are not allowed.
    AnonymousRefused,
    /// Unknown user or wrong password.
    BadCredentials,
}

/// Checks credentials against the configured users.
#[derive(Debug, Clone)]
pub struct Auth {
    allow_anonymous: bool,
    /// User name → PHC hash string.
    users: Arc<HashMap<String, String>>,
}

impl Auth {
    /// Loads the users file, if one is configured. A malformed line names its number.
    pub fn load(config: &AuthConfig) -> Result<Self, UsersFileError> {
        let users = match &config.users_file {
            Some(path) => read_users(path)?,
            None => HashMap::new(),
        };
        Ok(Self {
            allow_anonymous: config.allow_anonymous,
            users: Arc::new(users),
        })
    }

    /// Checks a username and password. Hash verification is deliberately slow, so it runs on the
    /// blocking pool rather than on a connection's task.
    pub async fn check(&self, login: Option<(String, String)>) -> Verdict {
        let auth = self.clone();
        tokio::task::spawn_blocking(move || auth.check_blocking(login))
            .await
            .unwrap_or(Verdict::BadCredentials)
    }

    /// [`Auth::check`] on the calling thread, for callers that cannot await (a SASL exchange driven by
    /// a library's synchronous callback). It takes as long as the hash takes; call it off the runtime's
    /// worker threads or inside `tokio::task::block_in_place`.
    pub fn check_blocking(&self, login: Option<(String, String)>) -> Verdict {
        let Some((username, password)) = login else {
            return if self.allow_anonymous {
                Verdict::Allowed
            } else {
                Verdict::AnonymousRefused
            };
        };
        let Some(hash) = self.users.get(&username) else {
            return Verdict::BadCredentials;
        };
        let verified = PasswordHash::new(hash).is_ok_and(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        });
        if verified {
            Verdict::Allowed
        } else {
            Verdict::BadCredentials
        }
    }

    /// Whether the users file named anyone (so username/password logins can succeed).
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether clients without credentials may connect.
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }
}

/// A users-file line for `username` with an argon2id hash of `password`.
pub fn users_file_line(username: &str, password: &str) -> Result<String, String> {
    if username.is_empty() || username.contains(':') {
        return Err("a user name may not be empty or contain ':'".into());
    }
    let salt = SaltString::generate(&mut OsRng);
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|error| error.to_string())?;
    Ok(format!("{username}:{hash}"))
}

fn read_users(path: &Path) -> Result<HashMap<String, String>, UsersFileError> {
    let error = |detail: String| UsersFileError {
        path: path.display().to_string(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let mut users = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, hash) = line
            .split_once(':')
            .ok_or_else(|| error(format!("line {} is not `name:hash`", number + 1)))?;
        PasswordHash::new(hash).map_err(|e| {
            error(format!(
                "line {}: not a PHC password hash ({e}); make one with `courier passwd {name}`",
                number + 1
            ))
        })?;
        users.insert(name.to_owned(), hash.to_owned());
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn users_from_a_file_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let line = users_file_line("alice", "s3cret").unwrap();
        std::fs::write(&path, format!("# users\n{line}\n")).unwrap();
        let auth = Auth::load(&AuthConfig {
            allow_anonymous: false,
            users_file: Some(path.clone()),
        })
        .unwrap();
        let login = |user: &str, password: &str| Some((user.to_owned(), password.to_owned()));
        assert_eq!(auth.check(login("alice", "s3cret")).await, Verdict::Allowed);
        assert_eq!(
            auth.check(login("alice", "nope")).await,
            Verdict::BadCredentials
        );
        assert_eq!(
            auth.check(login("bob", "s3cret")).await,
            Verdict::BadCredentials
        );
        assert_eq!(auth.check(None).await, Verdict::AnonymousRefused);

        std::fs::write(&path, "alice:plaintext\n").unwrap();
        let error = Auth::load(&AuthConfig {
            allow_anonymous: false,
            users_file: Some(path),
        })
        .unwrap_err();
        assert!(error.to_string().contains("line 1"), "{error}");
    }
}

//! The users file: one `name:PHC-hash[:role,role]` per line, argon2 hashes, checked by
//! [`Users::verify`] (slow on purpose: callers run it on the hashing pool).

use std::{collections::HashMap, fmt};

use argon2::{
    Argon2,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng},
};

/// An argon2id hash (of a random password nobody knows) with `courier passwd`'s parameters, checked
/// against for unknown users.
const UNKNOWN_USER_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$LnUdiV9ytKZYR8IqP9WLOw$Gp7lgJiSf3C0lxjX+fY/wKrNYf0rt+D5XDVuQ4eXGLc";

/// The users file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the users file {path}: {detail}")]
pub struct UsersFileError {
    /// The file.
    pub path: String,
    /// What was wrong.
    pub detail: String,
}

/// One user of the file.
#[derive(Clone, PartialEq, Eq)]
struct User {
    /// A PHC hash string, checked to parse when the file was read.
    hash: String,
    roles: Vec<String>,
}

/// The users of one file, as read. Its `Debug` shows how many, never a hash.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Users {
    by_name: HashMap<String, User>,
    /// The hash checked for unknown users: the file's costliest, so that no user's check takes
    /// longer than a stranger's and the time of an answer does not tell who exists (as long as
    /// the file's hashes share their parameters, as `courier passwd` writes them; a cheaper one
    /// answers faster).
    decoy: Option<String>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("count", &self.by_name.len())
            .finish_non_exhaustive()
    }
}

impl Users {
    /// Parses a users file's text; `path` names it in errors. A malformed line names its number.
    pub fn parse(path: &str, text: &str) -> Result<Self, UsersFileError> {
        let error = |detail: String| UsersFileError {
            path: path.to_owned(),
            detail,
        };
        let mut by_name = HashMap::new();
        let mut decoy: Option<(u64, String)> = None;
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // A PHC string has no ':', so the fields are unambiguous.
            let mut fields = line.splitn(3, ':');
            let (Some(name), Some(hash)) = (fields.next(), fields.next()) else {
                return Err(error(format!("line {number} is not `name:hash[:roles]`")));
            };
            let parsed = PasswordHash::new(hash).map_err(|e| {
                error(format!(
                    "line {number}: not a PHC password hash ({e}); make one with `courier passwd {name}`"
                ))
            })?;
            // Only argon2 is checked: another algorithm's hash could never match, and its user
            // would be refused without anyone knowing why.
            if argon2::Algorithm::try_from(parsed.algorithm).is_err() {
                return Err(error(format!(
                    "line {number}: {} is not an argon2 hash; make one with `courier passwd {name}`",
                    parsed.algorithm
                )));
            }
            let cost = cost(&parsed);
            if decoy.as_ref().is_none_or(|(most, _)| cost > *most) {
                decoy = Some((cost, hash.to_owned()));
            }
            let roles = fields
                .next()
                .map(|roles| {
                    roles
                        .split(',')
                        .map(str::trim)
                        .filter(|role| !role.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let user = User {
                hash: hash.to_owned(),
                roles,
            };
            if by_name.insert(name.to_owned(), user).is_some() {
                return Err(error(format!("line {number}: user {name:?} appears twice")));
            }
        }
        Ok(Self {
            by_name,
            decoy: decoy.map(|(_, hash)| hash),
        })
    }

    /// The roles of `username` if `password` is theirs. Deliberately slow (argon2): call it on
    /// the hashing pool.
    pub fn verify(&self, username: &str, password: &[u8]) -> Option<Vec<String>> {
        let Some(user) = self.by_name.get(username) else {
            // As slow as a known user's check, so the answer's time does not tell who exists.
            let decoy = self.decoy.as_deref().unwrap_or(UNKNOWN_USER_HASH);
            if let Ok(hash) = PasswordHash::new(decoy) {
                let _ = Argon2::default().verify_password(password, &hash);
            }
            return None;
        };
        let hash = PasswordHash::new(&user.hash).ok()?;
        Argon2::default()
            .verify_password(password, &hash)
            .is_ok()
            .then(|| user.roles.clone())
    }

    /// Whether the file names anyone.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// How many users the file names.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }
}

/// What checking a password against `hash` costs, roughly: argon2's memory times passes times
/// lanes (1 for parameters it does not name).
fn cost(hash: &PasswordHash<'_>) -> u64 {
    ["m", "t", "p"]
        .iter()
        .map(|&name| u64::from(hash.params.get_decimal(name).unwrap_or(1)))
        .product()
}

/// A users-file line for `username` with an argon2id hash of `password`, and `roles` if any.
pub fn users_file_line(username: &str, password: &str, roles: &[String]) -> Result<String, String> {
    if username.is_empty() || username.contains(':') {
        return Err("a user name may not be empty or contain ':'".into());
    }
    if let Some(role) = roles
        .iter()
        .find(|role| role.is_empty() || role.contains([',', ':']))
    {
        return Err(format!(
            "role {role:?}: a role may not be empty or contain ',' or ':'"
        ));
    }
    let salt = SaltString::generate(&mut OsRng);
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|error| error.to_string())?;
    if roles.is_empty() {
        Ok(format!("{username}:{hash}"))
    } else {
        Ok(format!("{username}:{hash}:{}", roles.join(",")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_their_roles_are_checked() {
        let alice = users_file_line("alice", "s3cret", &[]).unwrap();
        let ops = users_file_line("olga", "pw", &["admin".into(), "ops".into()]).unwrap();
        let users = Users::parse("users", &format!("# users\n{alice}\n\n{ops}\n")).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users.verify("alice", b"s3cret"), Some(vec![]));
        assert_eq!(users.verify("alice", b"nope"), None);
        assert_eq!(users.verify("bob", b"s3cret"), None);
        assert_eq!(
            users.verify("olga", b"pw"),
            Some(vec!["admin".to_owned(), "ops".to_owned()])
        );
    }

    #[test]
    fn the_hash_unknown_users_are_checked_against_parses() {
        assert!(PasswordHash::new(UNKNOWN_USER_HASH).is_ok());
        let users = Users::parse("users", "").unwrap();
        assert_eq!(users.verify("nobody", b"x"), None);
    }

    #[test]
    fn strangers_are_checked_against_the_costliest_hash_of_the_file() {
        let alice = users_file_line("alice", "a", &[]).unwrap();
        let strong = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(32 * 1024, 3, 1, None).unwrap(),
        )
        .hash_password(b"b", &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string();
        let users = Users::parse("users", &format!("{alice}\nbob:{strong}\n")).unwrap();
        assert_eq!(users.decoy.as_deref(), Some(strong.as_str()));
        // A stranger presenting that user's password is still a stranger.
        assert_eq!(users.verify("mallory", b"b"), None);
        assert_eq!(users.verify("bob", b"b"), Some(vec![]));
    }

    #[test]
    fn a_bad_line_is_named() {
        let error = Users::parse("users", "alice:plaintext\n").unwrap_err();
        assert!(error.to_string().contains("line 1"), "{error}");
        let error = Users::parse("users", "alice\n").unwrap_err();
        assert!(error.to_string().contains("line 1"), "{error}");
        let scrypt = "alice:$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E";
        let error = Users::parse("users", scrypt).unwrap_err();
        assert!(error.to_string().contains("not an argon2 hash"), "{error}");
        let line = users_file_line("alice", "a", &[]).unwrap();
        let error = Users::parse("users", &format!("{line}\n{line}\n")).unwrap_err();
        assert!(error.to_string().contains("twice"), "{error}");
        assert!(users_file_line("a:b", "x", &[]).is_err());
        assert!(users_file_line("a", "x", &["a,b".into()]).is_err());
    }
}

//! Users and API tokens: a token is 256 random bits shown once; the database keeps only its
//! SHA-256, which is enough to recognise it and useless to anyone who reads the database.

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Every token starts with this, so a leaked one is easy to recognise (and to grep for).
pub const TOKEN_PREFIX: &str = "tq_";

/// Who is calling, once the token has been checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    /// The unique name (`trainq user add NAME`).
    pub name: String,
    /// Admins act on every job and may set admin-only spec fields.
    pub admin: bool,
}

impl User {
    /// Whether this user may act on (cancel, read the outputs of) a job owned by `owner`.
    /// Jobs without an owner (accepted before users existed) belong to admins alone.
    pub fn may_act_on(&self, owner: Option<&str>) -> bool {
        self.admin || owner == Some(self.name.as_str())
    }
}

/// A fresh token: the prefix and 64 hex digits from the OS's random source.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex(&bytes))
}

/// What the database stores for a token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Checks a new user name: 1–32 characters of `a-z 0-9 . _ -`, starting with a letter or digit
/// (names appear in URLs, logs, Slurm job comments and metrics labels).
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 32
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "user name `{name}` must be 1–32 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_only_their_hash_is_kept() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
        assert!(!token_hash(&a).contains(&a[TOKEN_PREFIX.len()..]));
        // The published SHA-256 of "abc".
        assert_eq!(token_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn students_act_on_their_own_jobs_admins_on_all() {
        let alice = User { name: String::from("alice"), admin: false };
        let root = User { name: String::from("root"), admin: true };
        assert!(alice.may_act_on(Some("alice")));
        assert!(!alice.may_act_on(Some("bob")));
        assert!(!alice.may_act_on(None));
        assert!(root.may_act_on(Some("bob")) && root.may_act_on(None));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("alice.b_2-x").is_ok());
        for bad in ["", "Alice", "-x", "a/b", "a b", &"x".repeat(33)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}

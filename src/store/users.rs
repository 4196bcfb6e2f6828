//! The `users` table: names, admin flags and token hashes (never tokens).

use super::{Store, StoreError};
use crate::domain::user::{token_hash, User};
use crate::domain::Timestamp;

/// A user as `trainq user list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The user.
    pub user: User,
    /// RFC 3339.
    pub created_at: String,
}

impl Store {
    /// Adds a user holding `token` (whose hash alone is stored). False if the name is taken.
    pub async fn add_user(&self, name: &str, admin: bool, token: &str) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO users (name, token_sha256, admin, created_at, token_issued_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(token_hash(token))
        .bind(admin)
        .bind(Timestamp::now().to_rfc3339())
        .bind(super::unix_now())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Replaces a user's token (the old one stops working at once; the new one's age counts from
    /// now). False if there is no such user.
    pub async fn set_token(&self, name: &str, token: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE users SET token_sha256 = ?, token_issued_at = ? WHERE name = ?")
            .bind(token_hash(token))
            .bind(super::unix_now())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// The user a bearer token belongs to.
    pub async fn user_by_token(&self, token: &str) -> Result<Option<User>, StoreError> {
        let row: Option<(String, bool)> = sqlx::query_as("SELECT name, admin FROM users WHERE token_sha256 = ?")
            .bind(token_hash(token))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(name, admin)| User { name, admin }))
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows: Vec<(String, bool, String)> =
            sqlx::query_as("SELECT name, admin, created_at FROM users ORDER BY name").fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|(name, admin, created_at)| UserRecord { user: User { name, admin }, created_at })
            .collect())
    }

    /// Every stored value of the `users` table, as text: what a test scans for leaked tokens.
    pub async fn users_table_dump(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String, String, i64, String)> =
            sqlx::query_as("SELECT name, token_sha256, admin, created_at FROM users").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().flat_map(|(a, b, c, d)| [a, b, c.to_string(), d]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::user::new_token;

    #[tokio::test]
    async fn a_token_finds_its_user_and_is_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let token = new_token();
        assert!(store.add_user("alice", false, &token).await.unwrap());
        assert!(!store.add_user("alice", true, &new_token()).await.unwrap(), "names are unique");
        assert_eq!(
            store.user_by_token(&token).await.unwrap(),
            Some(User { name: String::from("alice"), admin: false })
        );
        assert_eq!(store.user_by_token("tq_wrong").await.unwrap(), None);
        assert!(store.users_table_dump().await.unwrap().iter().all(|value| !value.contains(&token[3..])));
        let rotated = new_token();
        assert!(store.set_token("alice", &rotated).await.unwrap());
        assert_eq!(store.user_by_token(&token).await.unwrap(), None, "the old token stops working");
        assert!(store.user_by_token(&rotated).await.unwrap().is_some());
        drop(store);
        // The database file itself holds no token either (not even in the WAL).
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(&token[3..]) && !text.contains(&rotated[3..]));
        }
    }
}

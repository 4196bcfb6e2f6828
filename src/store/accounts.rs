//! Accounts as the admin manages them over the API: the import of a roster (all or nothing, with
//! the welcome messages it owes in the same transaction), disabling, the admin flag, token age and
//! the last request. Tokens are kept as their hashes only, like everywhere in `users`.

use super::{unix_now, Store, StoreError};
use crate::domain::user::{token_hash, User};

/// The outbox's event for a new account's welcome mail (its token is made when it is delivered).
pub const WELCOME: &str = "welcome";

/// The least time between two writes of an account's `last_request_at`: a student polling every
/// second costs one write a minute, not one a request.
const LAST_REQUEST_RESOLUTION_SECS: f64 = 60.0;

/// Whom a bearer token belongs to, and whether it may still be used.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenHolder {
    /// The user.
    pub user: User,
    /// The admin disabled the account.
    pub disabled: bool,
    /// When the token was made, Unix seconds.
    pub token_issued_at: f64,
    /// When the account last sent a request, Unix seconds (to the minute).
    pub last_request_at: Option<f64>,
}

/// An account as the admin's list shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// The user's name.
    pub name: String,
    /// The person's full name.
    pub full_name: Option<String>,
    /// Where their mail goes.
    pub email: Option<String>,
    /// Admin or student.
    pub admin: bool,
    /// When the admin disabled the account, Unix seconds; `None`: enabled.
    pub disabled_at: Option<f64>,
    /// When the account was made (RFC 3339).
    pub created_at: String,
    /// When the account last sent a request, Unix seconds (to the minute).
    pub last_request_at: Option<f64>,
    /// Jobs they submitted, in any state.
    pub jobs: i64,
    /// Device time of all their runs (a running one counts up to now), seconds.
    pub device_seconds: f64,
}

/// One account a roster import creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    /// The user name (checked).
    pub name: String,
    /// The person's full name (shown to the admin; not compared when the account exists).
    pub full_name: Option<String>,
    /// The address (checked).
    pub email: Option<String>,
    /// Admin or student.
    pub admin: bool,
    /// The account's first token: its hash is stored. With a welcome mail it is one nobody ever
    /// sees, replaced when the mail is delivered.
    pub token: String,
    /// Queue a welcome mail (to `email`) that carries a fresh token.
    pub welcome: bool,
}

/// Why an import created nothing: a row names an existing user with other details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingDiffers {
    /// The row's index in the import.
    pub index: usize,
    /// `email` or `admin`.
    pub field: &'static str,
    /// What the existing account has.
    pub existing: String,
}

const ACCOUNT_QUERY: &str = "SELECT name, full_name, email, admin, disabled_at, created_at, last_request_at, \
     (SELECT COUNT(*) FROM jobs WHERE jobs.owner = users.name), \
     (SELECT COALESCE(SUM(COALESCE(ended_at, ?1) - started_at), 0.0) FROM job_runs WHERE job_runs.owner = users.name) \
     FROM users";

/// A token holder's columns: name, admin, disabled_at, token_issued_at, last_request_at.
type HolderRow = (String, bool, Option<f64>, Option<f64>, Option<f64>);

type AccountRow = (String, Option<String>, Option<String>, bool, Option<f64>, String, Option<f64>, i64, f64);

fn account(row: AccountRow) -> Account {
    let (name, full_name, email, admin, disabled_at, created_at, last_request_at, jobs, device_seconds) = row;
    Account { name, full_name, email, admin, disabled_at, created_at, last_request_at, jobs, device_seconds }
}

impl Store {
    /// The holder of a bearer token, disabled or not.
    pub async fn token_holder(&self, token: &str) -> Result<Option<TokenHolder>, StoreError> {
        let row: Option<HolderRow> = sqlx::query_as(
            "SELECT name, admin, disabled_at, token_issued_at, last_request_at FROM users WHERE token_sha256 = ?",
        )
        .bind(token_hash(token))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(name, admin, disabled_at, token_issued_at, last_request_at)| TokenHolder {
            user: User { name, admin },
            disabled: disabled_at.is_some(),
            token_issued_at: token_issued_at.unwrap_or(0.0),
            last_request_at,
        }))
    }

    /// Records a request of `holder`'s unless one was recorded in the last minute. Returns
    /// whether it wrote.
    pub async fn note_request(&self, holder: &TokenHolder) -> Result<bool, StoreError> {
        let now = unix_now();
        if holder.last_request_at.is_some_and(|last| now - last < LAST_REQUEST_RESOLUTION_SECS) {
            return Ok(false);
        }
        sqlx::query("UPDATE users SET last_request_at = ? WHERE name = ?")
            .bind(now)
            .bind(&holder.user.name)
            .execute(&self.pool)
            .await?;
        Ok(true)
    }

    /// Every account with its jobs and device time, by name.
    pub async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let rows: Vec<AccountRow> =
            sqlx::query_as(&format!("{ACCOUNT_QUERY} ORDER BY name")).bind(unix_now()).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(account).collect())
    }

    /// One account; `None` if there is no such user.
    pub async fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let row: Option<AccountRow> = sqlx::query_as(&format!("{ACCOUNT_QUERY} WHERE name = ?2"))
            .bind(unix_now())
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(account))
    }

    /// Creates the accounts of an import in one transaction, all or none: a row equal to an
    /// existing account (same email and role) is skipped; a row naming an existing account with
    /// other details creates nothing and says which. Each new account with `welcome` gets its
    /// welcome message in the outbox in the same transaction, so a crash loses none. Returns,
    /// per row, whether it was created.
    pub async fn import_accounts(
        &self,
        accounts: &[NewAccount],
    ) -> Result<Result<Vec<bool>, ExistingDiffers>, StoreError> {
        let now = unix_now();
        let created_at = crate::domain::Timestamp::now().to_rfc3339();
        let mut transaction = self.pool.begin().await?;
        let mut created = Vec::with_capacity(accounts.len());
        for (index, new) in accounts.iter().enumerate() {
            let existing: Option<(Option<String>, bool)> =
                sqlx::query_as("SELECT email, admin FROM users WHERE name = ?")
                    .bind(&new.name)
                    .fetch_optional(&mut *transaction)
                    .await?;
            if let Some((email, admin)) = existing {
                if email != new.email {
                    let existing = email.unwrap_or_else(|| String::from("no email"));
                    return Ok(Err(ExistingDiffers { index, field: "email", existing }));
                }
                if admin != new.admin {
                    let existing = String::from(if admin { "an admin" } else { "a student" });
                    return Ok(Err(ExistingDiffers { index, field: "admin", existing }));
                }
                created.push(false);
                continue;
            }
            sqlx::query(
                "INSERT INTO users (name, token_sha256, admin, created_at, email, token_issued_at, full_name) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&new.name)
            .bind(token_hash(&new.token))
            .bind(new.admin)
            .bind(&created_at)
            .bind(&new.email)
            .bind(now)
            .bind(&new.full_name)
            .execute(&mut *transaction)
            .await?;
            if let (true, Some(email)) = (new.welcome, &new.email) {
                sqlx::query(
                    "INSERT INTO notifications (job_id, owner, channel, target, secret, event, next_attempt_at, created_at) \
                     VALUES (NULL, ?, 'email', ?, NULL, ?, ?, ?)",
                )
                .bind(&new.name)
                .bind(email)
                .bind(WELCOME)
                .bind(now)
                .bind(now)
                .execute(&mut *transaction)
                .await?;
            }
            created.push(true);
        }
        transaction.commit().await?;
        Ok(Ok(created))
    }

    /// Disables or enables an account. False if there is no such user.
    pub async fn set_disabled(&self, name: &str, disabled: bool) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE users SET disabled_at = CASE WHEN ?1 THEN COALESCE(disabled_at, ?2) ELSE NULL END WHERE name = ?3",
        )
        .bind(disabled)
        .bind(unix_now())
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Makes an account an admin or a student. False if there is no such user.
    pub async fn set_admin(&self, name: &str, admin: bool) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE users SET admin = ? WHERE name = ?").bind(admin).bind(name).execute(&self.pool).await?;
        Ok(result.rows_affected() == 1)
    }

    /// Every value in every column of every table, as text: what a test scans for tokens in
    /// clear. Reads the whole database; for tests and audits, never for requests.
    pub async fn every_stored_value(&self) -> Result<Vec<String>, StoreError> {
        let tables: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table'").fetch_all(&self.pool).await?;
        let mut values = Vec::new();
        for (table,) in tables {
            let columns: Vec<(String,)> =
                sqlx::query_as("SELECT name FROM pragma_table_info(?)").bind(&table).fetch_all(&self.pool).await?;
            for (column,) in columns {
                let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
                // As bytes: a blob need not be UTF-8, and a token inside one must still be found.
                let cells: Vec<(Option<Vec<u8>>,)> =
                    sqlx::query_as(&format!("SELECT CAST({} AS BLOB) FROM {}", quoted(&column), quoted(&table)))
                        .fetch_all(&self.pool)
                        .await?;
                values.extend(
                    cells
                        .into_iter()
                        .flat_map(|(cell,)| cell)
                        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
                );
            }
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::user::new_token;

    fn new(name: &str, email: Option<&str>, welcome: bool) -> NewAccount {
        NewAccount {
            name: name.to_string(),
            full_name: None,
            email: email.map(str::to_string),
            admin: false,
            token: new_token(),
            welcome,
        }
    }

    #[tokio::test]
    async fn an_import_is_all_or_nothing_and_skips_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let first = [new("alice", Some("alice@example.org"), true), new("bob", None, true)];
        assert_eq!(store.import_accounts(&first).await.unwrap(), Ok(vec![true, true]));
        // Only alice has an address, so only she is owed a welcome; it holds no token.
        let due = store.due_notifications(unix_now() + 1.0, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].owner.as_str(), due[0].event.as_str(), due[0].job_id.as_str()), ("alice", WELCOME, ""));
        // The same rows again: nothing new.
        let again = [new("alice", Some("alice@example.org"), true), new("bob", None, true)];
        assert_eq!(store.import_accounts(&again).await.unwrap(), Ok(vec![false, false]));
        // One row that differs: nothing of the import is created.
        let clash = [new("carol", None, false), new("alice", Some("other@example.org"), false)];
        let refused = store.import_accounts(&clash).await.unwrap().unwrap_err();
        assert_eq!((refused.index, refused.field, refused.existing.as_str()), (1, "email", "alice@example.org"));
        assert!(store.account("carol").await.unwrap().is_none(), "nothing was created");
        assert_eq!(store.due_notifications(unix_now() + 1.0, 10).await.unwrap().len(), 1);
        let tokens: Vec<&str> = first.iter().chain(&again).chain(&clash).map(|row| &row.token[3..]).collect();
        for value in store.every_stored_value().await.unwrap() {
            assert!(tokens.iter().all(|token| !value.contains(token)), "a token in clear: {value}");
        }
    }

    #[tokio::test]
    async fn a_holder_knows_whether_the_account_is_disabled_and_when_its_token_was_made() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let token = new_token();
        let before = unix_now();
        assert!(store.add_user("alice", false, &token).await.unwrap());
        let holder = store.token_holder(&token).await.unwrap().unwrap();
        assert!(!holder.disabled && holder.token_issued_at >= before - 1.0 && holder.last_request_at.is_none());
        assert!(store.note_request(&holder).await.unwrap());
        let holder = store.token_holder(&token).await.unwrap().unwrap();
        assert!(!store.note_request(&holder).await.unwrap(), "once a minute at most");
        assert!(store.set_disabled("alice", true).await.unwrap());
        assert!(store.token_holder(&token).await.unwrap().unwrap().disabled);
        assert!(store.set_disabled("alice", false).await.unwrap());
        assert!(!store.token_holder(&token).await.unwrap().unwrap().disabled);
        assert!(store.set_admin("alice", true).await.unwrap());
        let account = store.account("alice").await.unwrap().unwrap();
        assert!(account.admin && account.last_request_at.is_some() && account.jobs == 0);
        assert!(!store.set_disabled("nobody", true).await.unwrap());
    }
}

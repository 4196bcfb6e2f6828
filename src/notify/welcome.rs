//! A new account's welcome mail: the token and the exact `trainq login` line. The outbox row
//! names only the user and the address; the token is made here, when the message is delivered
//! (a rotation), so no token is ever stored in clear. A message delivered twice (a crash between
//! the send and its record) carries a newer token the second time, which replaces the first; the
//! mail says so, and its Message-ID is new each time so no receiver drops it as a duplicate.

use super::email::Mailer;
use crate::domain::user::new_token;
use crate::store::{Notification, Store};

/// The welcome's subject.
pub fn subject(name: &str) -> String {
    format!("[trainq] your account `{name}` and its token")
}

/// The welcome's plain-text body: the token and how to log in with it.
pub fn body(name: &str, token: &str, public_url: &str) -> String {
    let url = public_url.trim_end_matches('/');
    format!(
        "Welcome to trainq, {name}.\n\n\
         Your token (it replaces any token sent to you before; earlier ones no longer work):\n\n    {token}\n\n\
         Log in from a terminal with this line (it saves the token in ~/.config/trainq/config.toml, mode 0600):\n\n    \
         echo '{token}' | trainq login {url} --token-stdin\n\n\
         or run `trainq login {url}` and paste the token when it asks. The dashboard is at {url}/ (Settings takes the token).\n\
         Keep the token to yourself; `trainq token rotate` gives you a new one whenever you like.\n"
    )
}

/// A Message-ID new at every send (unlike a job's notification, whose retries share one): each
/// send carries another token, and the newest is the one that works.
fn message_id(row: &Notification, domain: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_nanos());
    format!("<trainq.welcome.{}.{}.{nanos}@{domain}>", row.id, row.attempts + 1)
}

/// One attempt at a welcome: a new token for the user, then the mail that carries it.
pub async fn deliver(
    store: &Store,
    mailer: &Mailer,
    transport: &lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    public_url: &str,
    row: &Notification,
) -> Result<(), String> {
    match store.account(&row.owner).await {
        Ok(Some(account)) if account.disabled_at.is_some() => {
            return Err(format!("the account `{}` is disabled; enable it, then rotate its token", row.owner))
        }
        Ok(Some(_)) => {}
        Ok(None) => return Err(format!("there is no user `{}`", row.owner)),
        Err(err) => return Err(format!("reading user {}: {}", row.owner, super::error_chain(&err))),
    }
    let token = new_token();
    match store.set_token(&row.owner, &token).await {
        Ok(true) => {}
        Ok(false) => return Err(format!("there is no user `{}`", row.owner)),
        Err(err) => return Err(format!("rotating {}'s token: {}", row.owner, super::error_chain(&err))),
    }
    let body = body(&row.owner, &token, public_url);
    mailer.send(transport, &row.target, &subject(&row.owner), body, message_id(row, mailer.domain())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mail_holds_the_token_and_the_exact_login_line() {
        let text = body("alice", "tq_0123", "http://gpubox:8080/");
        assert!(text.contains("\n    tq_0123\n"), "{text}");
        assert!(text.contains("echo 'tq_0123' | trainq login http://gpubox:8080 --token-stdin\n"), "{text}");
        assert!(text.contains("replaces any token sent to you before"), "{text}");
        assert_eq!(subject("alice"), "[trainq] your account `alice` and its token");
    }
}

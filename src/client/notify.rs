//! `trainq notify`: where the caller's job notifications go (`PUT /api/me`), printed back as the
//! server saved them (`GET /api/me`; the webhook's secret is never shown).

use super::{Api, Profile};
use serde_json::{json, Map, Value};

/// What `trainq notify` was asked to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyChange {
    /// A new email address.
    pub email: Option<String>,
    /// A new webhook URL (with `secret`).
    pub webhook: Option<String>,
    /// The new webhook's signing secret.
    pub secret: Option<String>,
    /// Remove both targets.
    pub off: bool,
}

impl NotifyChange {
    /// The body of `PUT /api/me`; `None` when nothing is to change (then the settings are shown).
    pub fn body(&self) -> anyhow::Result<Option<Value>> {
        let mut body = Map::new();
        if self.off {
            anyhow::ensure!(
                self.email.is_none() && self.webhook.is_none(),
                "--off removes the email and the webhook; give it alone (or --email/--webhook alone to replace them)"
            );
            body.insert(String::from("email"), Value::Null);
            body.insert(String::from("webhook"), Value::Null);
        }
        if let Some(email) = &self.email {
            body.insert(String::from("email"), json!(email));
        }
        match (&self.webhook, &self.secret) {
            (Some(url), Some(secret)) => {
                body.insert(String::from("webhook"), json!({"url": url, "secret": secret}));
            }
            (Some(_), None) => anyhow::bail!(
                "--webhook needs --webhook-secret (16+ characters, e.g. `openssl rand -hex 32`): the server signs each POST with it"
            ),
            (None, Some(_)) => anyhow::bail!("--webhook-secret goes with --webhook URL"),
            (None, None) => {}
        }
        Ok((!body.is_empty()).then_some(Value::Object(body)))
    }
}

/// The settings as lines for a person.
fn describe(me: &Value) -> String {
    let email = me["email"].as_str().unwrap_or("(none)");
    let webhook = me["webhook"]["url"]
        .as_str()
        .map_or_else(|| String::from("(none)"), |url| format!("{url} (signed with your secret)"));
    format!("email:   {email}\nwebhook: {webhook}\n")
}

/// Changes the caller's targets (if asked) and prints them.
pub async fn notify(change: &NotifyChange) -> anyhow::Result<()> {
    let body = change.body()?;
    let api = Api::new(Profile::load()?)?;
    let me = match body {
        Some(body) => api.send(api.http.put(format!("{}/api/me", api.profile.url)).json(&body)).await?,
        None => api.get("/api/me").await?,
    };
    print!("{}", describe(&me));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_the_put_body() {
        assert_eq!(NotifyChange::default().body().unwrap(), None, "no flags: show");
        let both = NotifyChange {
            email: Some(String::from("a@example.org")),
            webhook: Some(String::from("https://h.example.org")),
            secret: Some(String::from("0123456789abcdef")),
            off: false,
        };
        assert_eq!(
            both.body().unwrap(),
            Some(
                json!({"email": "a@example.org", "webhook": {"url": "https://h.example.org", "secret": "0123456789abcdef"}})
            )
        );
        let off = NotifyChange { off: true, ..NotifyChange::default() };
        assert_eq!(off.body().unwrap(), Some(json!({"email": null, "webhook": null})));
        assert!(NotifyChange { webhook: Some(String::from("https://h")), ..NotifyChange::default() }.body().is_err());
        assert!(NotifyChange { off: true, email: Some(String::from("a@b")), ..NotifyChange::default() }
            .body()
            .is_err());
        assert_eq!(
            describe(&json!({"email": null, "webhook": {"url": "https://h"}})),
            "email:   (none)\nwebhook: https://h (signed with your secret)\n"
        );
    }
}

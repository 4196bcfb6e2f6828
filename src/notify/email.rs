//! Email over SMTP with lettre: `smtps://` (TLS from the start), `smtp://…?tls=required`
//! (STARTTLS, refused without it) or plain `smtp://` (a relay on the same host); credentials in
//! the URL.

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// How long one SMTP conversation may take before the attempt counts as failed.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A mail setting the admin got wrong; `trainq serve` refuses to start with it.
#[derive(Debug, thiserror::Error)]
pub enum MailSettingError {
    /// `--smtp-url` does not parse.
    #[error("--smtp-url: {0} (e.g. smtps://user:password@mail.example.org, smtp://mail.example.org:587?tls=required, smtp://localhost:25)")]
    Url(String),
    /// `--smtp-from` is not an address.
    #[error("--smtp-from `{0}` is not an email address (e.g. `trainq <trainq@gpubox.example.org>`)")]
    From(String),
}

/// Sends the notifications' emails through the admin's SMTP server.
#[derive(Debug, Clone)]
pub struct Mailer {
    url: String,
    from: Mailbox,
}

impl Mailer {
    /// Checks the settings once, at start, so a typo is an error then rather than a failed
    /// delivery hours later.
    pub fn new(url: &str, from: &str) -> Result<Mailer, MailSettingError> {
        AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|err| MailSettingError::Url(err.to_string()))?;
        let from: Mailbox = from.parse().map_err(|_| MailSettingError::From(from.to_string()))?;
        Ok(Mailer { url: url.to_string(), from })
    }

    /// The domain of the sender's address, for Message-IDs.
    pub fn domain(&self) -> &str {
        self.from.email.domain()
    }

    /// A transport for one round of deliveries. Built per round and dropped after it, so no
    /// pooled connection (and no pool-cleaning timer) outlives the work: idle means idle.
    pub fn transport(&self) -> AsyncSmtpTransport<Tokio1Executor> {
        AsyncSmtpTransport::<Tokio1Executor>::from_url(&self.url)
            .expect("checked in Mailer::new")
            .timeout(Some(SMTP_TIMEOUT))
            .build()
    }

    /// Sends one plain-text message to `to`; the error says what the server or network answered.
    pub async fn send(
        &self,
        transport: &AsyncSmtpTransport<Tokio1Executor>,
        to: &str,
        subject: &str,
        body: String,
        message_id: String,
    ) -> Result<(), String> {
        let to: Mailbox = to.parse().map_err(|err| format!("the address `{to}` is not usable: {err}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(message_id))
            .date_now()
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|err| format!("building the message: {err}"))?;
        transport.send(message).await.map(|_| ()).map_err(|err| format!("SMTP: {}", super::error_chain(&err)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_at_start() {
        assert!(Mailer::new("smtp://localhost:2525", "trainq <trainq@gpubox.example.org>").is_ok());
        assert!(Mailer::new("smtps://user:secret@mail.example.org", "trainq@example.org").is_ok());
        assert!(Mailer::new("smtp://mail.example.org:587?tls=required", "trainq@example.org").is_ok());
        assert!(matches!(Mailer::new("http://mail.example.org", "trainq@example.org"), Err(MailSettingError::Url(_))));
        assert!(matches!(Mailer::new("smtp://localhost", "not an address"), Err(MailSettingError::From(_))));
        assert_eq!(Mailer::new("smtp://localhost", "trainq@gpubox.example.org").unwrap().domain(), "gpubox.example.org");
    }
}

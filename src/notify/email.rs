//! Email over SMTP with lettre: `smtps://` (TLS from the start), `smtp://…?tls=required`
//! (STARTTLS, refused without it) or plain `smtp://` (a relay on the same host); credentials in
//! the URL. The server's certificate is checked against the public roots, and against the
//! admin's own CA with `--smtp-ca-file`.

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
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
    /// `--smtp-ca-file` is unreadable, not a PEM certificate, or given for a URL without TLS.
    #[error("--smtp-ca-file {path}: {message}")]
    Ca {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// `--smtp-from` is not an address.
    #[error("--smtp-from `{0}` is not an email address (e.g. `trainq <trainq@gpubox.example.org>`)")]
    From(String),
}

/// Sends the notifications' emails through the admin's SMTP server.
#[derive(Debug, Clone)]
pub struct Mailer {
    url: String,
    from: Mailbox,
    /// The admin's CA (PEM) and the URL's TLS mode it applies to, with `--smtp-ca-file`.
    ca: Option<(Vec<u8>, TlsMode)>,
}

/// How a connection is encrypted, from `--smtp-url` (as lettre reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    /// `smtps://`: TLS from the first byte.
    Wrapper,
    /// `smtp://…?tls=required`: STARTTLS or nothing.
    Required,
    /// `smtp://…?tls=opportunistic`: STARTTLS when offered.
    Opportunistic,
}

impl TlsMode {
    /// The URL's mode and host; `None` for plain `smtp://` (no TLS, so no CA to trust).
    fn of(url: &str) -> Option<(TlsMode, String)> {
        let url = url::Url::parse(url).ok()?;
        let tls = url.query_pairs().find(|(key, _)| key == "tls").map(|(_, value)| value.into_owned());
        let mode = match (url.scheme(), tls.as_deref()) {
            ("smtps", _) => TlsMode::Wrapper,
            ("smtp", Some("required")) => TlsMode::Required,
            ("smtp", Some("opportunistic")) => TlsMode::Opportunistic,
            _ => return None,
        };
        Some((mode, url.host_str()?.trim_start_matches('[').trim_end_matches(']').to_string()))
    }

    fn tls(self, parameters: TlsParameters) -> Tls {
        match self {
            TlsMode::Wrapper => Tls::Wrapper(parameters),
            TlsMode::Required => Tls::Required(parameters),
            TlsMode::Opportunistic => Tls::Opportunistic(parameters),
        }
    }
}

/// TLS parameters for `host` that trust the public roots and the CA in `pem`.
fn tls_parameters(host: &str, pem: &[u8]) -> Result<TlsParameters, String> {
    // lettre's rustls reader takes a file without any certificate as an empty list.
    if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(String::from("not a PEM certificate: no `-----BEGIN CERTIFICATE-----` in it"));
    }
    let certificate = Certificate::from_pem(pem).map_err(|err| format!("not a PEM certificate: {err}"))?;
    TlsParameters::builder(host.to_string()).add_root_certificate(certificate).build().map_err(|err| err.to_string())
}

impl Mailer {
    /// Checks the settings once, at start, so a typo is an error then rather than a failed
    /// delivery hours later.
    pub fn new(url: &str, from: &str, ca_file: Option<&std::path::Path>) -> Result<Mailer, MailSettingError> {
        AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|err| MailSettingError::Url(err.to_string()))?;
        let from: Mailbox = from.parse().map_err(|_| MailSettingError::From(from.to_string()))?;
        let ca = match ca_file {
            None => None,
            Some(path) => {
                let ca_error = |message: String| MailSettingError::Ca { path: path.display().to_string(), message };
                let pem = std::fs::read(path).map_err(|err| ca_error(err.to_string()))?;
                let (mode, host) = TlsMode::of(url).ok_or_else(|| {
                    ca_error(String::from("--smtp-url has no TLS (use smtps://… or smtp://…?tls=required)"))
                })?;
                tls_parameters(&host, &pem).map_err(ca_error)?;
                Some((pem, mode))
            }
        };
        Ok(Mailer { url: url.to_string(), from, ca })
    }

    /// The domain of the sender's address, for Message-IDs.
    pub fn domain(&self) -> &str {
        self.from.email.domain()
    }

    /// A transport for one round of deliveries. Built per round and dropped after it, so no
    /// pooled connection (and no pool-cleaning timer) outlives the work: idle means idle.
    pub fn transport(&self) -> AsyncSmtpTransport<Tokio1Executor> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&self.url).expect("checked in Mailer::new");
        if let Some((pem, mode)) = &self.ca {
            let (_, host) = TlsMode::of(&self.url).expect("checked in Mailer::new");
            builder = builder.tls(mode.tls(tls_parameters(&host, pem).expect("checked in Mailer::new")));
        }
        builder.timeout(Some(SMTP_TIMEOUT)).build()
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
        assert!(Mailer::new("smtp://localhost:2525", "trainq <trainq@gpubox.example.org>", None).is_ok());
        assert!(Mailer::new("smtps://user:secret@mail.example.org", "trainq@example.org", None).is_ok());
        assert!(Mailer::new("smtp://mail.example.org:587?tls=required", "trainq@example.org", None).is_ok());
        assert!(matches!(
            Mailer::new("http://mail.example.org", "trainq@example.org", None),
            Err(MailSettingError::Url(_))
        ));
        assert!(matches!(Mailer::new("smtp://localhost", "not an address", None), Err(MailSettingError::From(_))));
        assert_eq!(
            Mailer::new("smtp://localhost", "trainq@gpubox.example.org", None).unwrap().domain(),
            "gpubox.example.org"
        );
    }

    #[test]
    fn the_admins_ca_applies_to_the_urls_tls_mode_only() {
        assert_eq!(
            TlsMode::of("smtps://u:p@mail.example.org"),
            Some((TlsMode::Wrapper, String::from("mail.example.org")))
        );
        assert_eq!(
            TlsMode::of("smtp://127.0.0.1:2525?tls=required"),
            Some((TlsMode::Required, String::from("127.0.0.1")))
        );
        assert_eq!(
            TlsMode::of("smtp://mail:587?tls=opportunistic").map(|(mode, _)| mode),
            Some(TlsMode::Opportunistic)
        );
        assert_eq!(TlsMode::of("smtp://localhost:25"), None);
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = Mailer::new("smtps://mail.example.org", "trainq@example.org", Some(&missing)).unwrap_err();
        assert!(matches!(err, MailSettingError::Ca { .. }), "{err}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = Mailer::new("smtps://mail.example.org", "trainq@example.org", Some(&junk)).unwrap_err();
        assert!(err.to_string().contains("PEM"), "{err}");
        let err = Mailer::new("smtp://localhost:25", "trainq@example.org", Some(&junk)).unwrap_err();
        assert!(err.to_string().contains("no TLS"), "{err}");
    }
}

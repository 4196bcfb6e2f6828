//! TLS on the wire: the server's certificate (`trainq serve --tls-cert/--tls-key`), re-read on
//! SIGHUP and when its files change, the handshakes of the TLS port, and the CA a client of the
//! API (`trainq login --ca-file`, `trainq relay --ca-file`) trusts. No axum here: the listener
//! `http::serve` runs the API on is `http/tls_listener.rs`, over [`accept_connections`].
//!
//! Only TLS 1.2 and 1.3 are offered (rustls knows no older version), with the ring provider.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// How often the certificate's and key's files are checked for a change (two `stat` calls).
const FILE_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// A connection that has not finished its handshake by then is closed: a silent client holds no
/// task for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a plain-HTTP request to the TLS port may take to arrive, and to be drained after the
/// answer (closing with unread bytes would reset the connection before the client reads it).
const PLAIN_HTTP_GRACE: Duration = Duration::from_secs(1);
/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// What a plain-HTTP request to the TLS port is answered, so curl or a browser says why at once.
const PLAIN_HTTP_ANSWER: &str = "this port speaks HTTPS: use an https:// URL\n";
/// The `Strict-Transport-Security` value of TLS answers: a year, as browsers' preload lists ask.
pub const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000";

/// Why the certificate or key cannot be used; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only one of the two flags was given.
    #[error("--tls-cert and --tls-key go together: give both (or neither, to serve plain HTTP)")]
    HalfConfigured,
    /// A file could not be read or holds no PEM item of its kind.
    #[error("cannot read the {what} in {path}: {reason}")]
    Unreadable { what: &'static str, path: PathBuf, reason: String },
    /// The key is not one rustls can sign with.
    #[error("cannot use the private key in {path}: {reason}")]
    UnusableKey { path: PathBuf, reason: String },
    /// The key belongs to another certificate.
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
}

/// The two PEM files `--tls-cert` and `--tls-key` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The certificate chain, the server's own first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl CertificateFiles {
    /// The files of `--tls-cert` and `--tls-key`: both, neither (plain HTTP), or an error.
    pub fn from_flags(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<CertificateFiles>, TlsError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(CertificateFiles { cert: cert.to_path_buf(), key: key.to_path_buf() })),
            (None, None) => Ok(None),
            _ => Err(TlsError::HalfConfigured),
        }
    }

    /// Reads and checks both files: the chain parses, the key parses, and the key is the
    /// certificate's.
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        let unreadable =
            |what, path: &Path, reason: String| TlsError::Unreadable { what, path: path.to_path_buf(), reason };
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|items| items.collect::<Result<Vec<_>, _>>())
            .map_err(|err| unreadable("certificate", &self.cert, err.to_string()))?;
        if chain.is_empty() {
            return Err(unreadable("certificate", &self.cert, String::from("no `BEGIN CERTIFICATE` block")));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|err| unreadable("private key", &self.key, err.to_string()))?;
        CertifiedKey::from_der(chain, key, &provider()).map_err(|err| match err {
            rustls::Error::InconsistentKeys(_) => {
                TlsError::KeyMismatch { cert: self.cert.clone(), key: self.key.clone() }
            }
            other => TlsError::UnusableKey { path: self.key.clone(), reason: other.to_string() },
        })
    }

    /// What says the files changed: each one's modification time, size and inode (an editor or
    /// certbot replaces the file; an admin may rewrite it in place).
    async fn stamp(&self) -> [Option<(SystemTime, u64, u64)>; 2] {
        use std::os::unix::fs::MetadataExt;
        let stamp_of = |path: PathBuf| async move {
            let metadata = tokio::fs::metadata(path).await.ok()?;
            Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
        };
        [stamp_of(self.cert.clone()).await, stamp_of(self.key.clone()).await]
    }
}

/// How the API is reached: the answers' headers (`Strict-Transport-Security` over TLS) and
/// `/readyz`'s `tls` check depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    /// The server speaks TLS itself (`--tls-cert`).
    pub tls: bool,
    /// It listens on a loopback address only, so plain HTTP never leaves the machine (a TLS
    /// proxy such as Caddy in front is then the usual setup).
    pub loopback_only: bool,
}

impl Transport {
    /// The transport of a server listening on `address`, with or without its own TLS.
    pub fn new(tls: bool, address: SocketAddr) -> Transport {
        Transport { tls, loopback_only: address.ip().is_loopback() }
    }

    /// Why this transport is a risk, when it is one: plain HTTP reachable from the network.
    pub fn clear_text_warning(&self) -> Option<&'static str> {
        (!self.tls && !self.loopback_only).then_some(
            "plain HTTP on a network address: every student's token crosses the network in clear; serve with \
             --tls-cert and --tls-key, or listen on 127.0.0.1 behind a TLS proxy",
        )
    }
}

/// The one crypto provider of the server's TLS and of the certificate checks.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate the next handshake presents: replaced whole when the files change, while the
/// connections that already shook hands keep theirs.
#[derive(Debug)]
pub struct ReloadingCertificate {
    files: CertificateFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner)))
    }
}

impl ReloadingCertificate {
    /// Loads the files once: an error here stops the server's start, naming the file.
    pub fn load(files: CertificateFiles) -> Result<Arc<ReloadingCertificate>, TlsError> {
        let current = RwLock::new(Arc::new(files.load()?));
        Ok(Arc::new(ReloadingCertificate { files, current }))
    }

    /// Re-reads the files on SIGHUP and whenever their stamps change, for the life of the
    /// process. A pair that does not load (a certificate written before its key, a typo) is
    /// logged and the previous certificate stays; the next change is tried again.
    pub fn keep_fresh(self: Arc<Self>) -> std::io::Result<()> {
        // Installed now, before the task runs: a SIGHUP from then on reloads instead of ending
        // the process.
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            let mut seen = self.files.stamp().await;
            loop {
                let asked = tokio::select! {
                    _ = hangup.recv() => true,
                    () = tokio::time::sleep(FILE_POLL_INTERVAL) => false,
                };
                let stamp = self.files.stamp().await;
                if !asked && stamp == seen {
                    continue;
                }
                seen = stamp;
                let files = self.files.clone();
                match tokio::task::spawn_blocking(move || files.load()).await {
                    Ok(Ok(key)) => {
                        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
                        tracing::info!(cert = %self.files.cert.display(), "TLS: the next connections get the new certificate");
                    }
                    Ok(Err(err)) => tracing::warn!(error = %err, "TLS: kept the previous certificate"),
                    Err(err) => tracing::warn!(error = %err, "TLS: reloading the certificate panicked"),
                }
            }
        });
        Ok(())
    }

    /// The rustls configuration of the TLS port: TLS 1.2 and 1.3, HTTP/1.1, this certificate.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring offers TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A connection that finished its TLS handshake, and its peer's address.
pub type TlsConnection = (TlsStream<TcpStream>, SocketAddr);

/// Accepts TCP connections on `listener` for as long as the receiver lives, each handshake in a
/// task of its own (a slow or silent client delays no one else); the connections that shook hands
/// come out of the returned channel. A client that speaks plain HTTP is answered 400 in plain text
/// and closed at once.
pub fn accept_connections(
    listener: TcpListener,
    certificate: &Arc<ReloadingCertificate>,
) -> tokio::sync::mpsc::Receiver<TlsConnection> {
    let acceptor = tokio_rustls::TlsAcceptor::from(certificate.server_config());
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                () = sender.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors, mostly: wait rather than spin.
                        tracing::warn!(error = %err, "TLS: accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                if let Some(connection) = handshake(&acceptor, stream, peer).await {
                    let _ = sender.send((connection, peer)).await;
                }
            });
        }
    });
    receiver
}

/// The TLS handshake of one connection, or `None` (closed) when it is not TLS, fails or stalls.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    let mut first = [0_u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(Ok(1)) => {
            tracing::debug!(%peer, "TLS: refused a plain-HTTP request");
            refuse_plain_http(stream).await;
            return None;
        }
        _ => return None,
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(connection)) => Some(connection),
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "TLS: a handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// Answers a plain-HTTP request on the TLS port with a 400 that says why, then closes.
async fn refuse_plain_http(mut stream: TcpStream) {
    let mut request = vec![0_u8; 16 * 1024];
    let _ = tokio::time::timeout(PLAIN_HTTP_GRACE, stream.read(&mut request)).await;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{PLAIN_HTTP_ANSWER}",
        PLAIN_HTTP_ANSWER.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    // Read what else the client sent until it hangs up, so the close is not a reset.
    let _ = tokio::time::timeout(PLAIN_HTTP_GRACE, async {
        while matches!(stream.read(&mut request).await, Ok(read) if read > 0) {}
    })
    .await;
}

/// `builder` trusting the CA certificates of the PEM file `ca_file` besides the usual roots: what
/// `trainq login --ca-file` saves and `TRAINQ_CA_FILE` names, for a campus CA.
pub fn trust_ca_file(builder: reqwest::ClientBuilder, ca_file: &Path) -> anyhow::Result<reqwest::ClientBuilder> {
    use anyhow::Context;
    let pem = std::fs::read(ca_file).with_context(|| format!("reading the CA file {}", ca_file.display()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("reading the CA file {}: not PEM certificates", ca_file.display()))?;
    anyhow::ensure!(!certificates.is_empty(), "the CA file {} holds no `BEGIN CERTIFICATE` block", ca_file.display());
    Ok(certificates.into_iter().fold(builder, reqwest::ClientBuilder::add_root_certificate))
}

/// A failed request's TLS reason in words a student can act on, or `None` when TLS is not why
/// it failed. `url` is the server's base URL.
pub fn explain_tls_failure(error: &(dyn std::error::Error + 'static), url: &str) -> Option<String> {
    use rustls::CertificateError;
    let tls = rustls_error(error)?;
    let host = url::Url::parse(url).ok().and_then(|url| url.host_str().map(str::to_string)).unwrap_or_default();
    Some(match tls {
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => format!(
            "the server's certificate is not valid for the name `{host}`: use the host name its certificate names \
             (the one the admin gave you), not another name or address ({tls})"
        ),
        rustls::Error::InvalidCertificate(CertificateError::Expired)
        | rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => format!(
            "the server's certificate has expired: tell the course's admin (a renewed certificate is picked up \
             without a restart) ({tls})"
        ),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the server's certificate is signed by an authority this client does not trust: pass the campus CA with \
             `trainq login {url} --ca-file CA.pem` (or set TRAINQ_CA_FILE) ({tls})"
        ),
        rustls::Error::InvalidMessage(_) => {
            format!("{host} does not speak TLS on this port: is the URL http://, not https://? ({tls})")
        }
        other => format!("TLS with {host} failed: {other}"),
    })
}

/// The rustls error somewhere in `error`'s chain. An `io::Error`'s `source` skips the error it
/// wraps (and the connectors wrap one `io::Error` in another), so each is looked inside.
fn rustls_error<'error>(error: &'error (dyn std::error::Error + 'static)) -> Option<&'error rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let wrapped = error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
    if let Some(found) = wrapped.and_then(|inner| rustls_error(inner)) {
        return Some(found);
    }
    error.source().and_then(rustls_error)
}

/// Whether `url` sends the token in clear over a network: plain `http://` to a host that is not
/// this machine.
pub fn is_clear_text_over_network(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else { return false };
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost" || name.ends_with(".localhost"),
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        None => true,
    };
    url.scheme() == "http" && !loopback
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_to_another_machine_is_clear_text_over_a_network() {
        assert!(is_clear_text_over_network("http://gpubox.campus.edu:8080"));
        assert!(is_clear_text_over_network("http://10.0.0.5:8080"));
        assert!(!is_clear_text_over_network("https://gpubox.campus.edu"));
        assert!(!is_clear_text_over_network("http://127.0.0.1:8080"));
        assert!(!is_clear_text_over_network("http://localhost:8080"));
        assert!(!is_clear_text_over_network("http://[::1]:8080"));
    }

    #[test]
    fn a_tls_error_inside_io_errors_is_found_and_worded() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        let nested = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        let message = explain_tls_failure(&nested, "https://gpubox.example.edu:8443").unwrap();
        assert!(message.contains("has expired"), "{message}");
        let unrelated = std::io::Error::other("connection refused");
        assert_eq!(explain_tls_failure(&unrelated, "https://gpubox.example.edu:8443"), None);
    }

    #[test]
    fn the_two_flags_go_together() {
        let path = Path::new("/etc/trainq/cert.pem");
        assert!(matches!(CertificateFiles::from_flags(Some(path), None), Err(TlsError::HalfConfigured)));
        assert!(matches!(CertificateFiles::from_flags(None, Some(path)), Err(TlsError::HalfConfigured)));
        assert_eq!(CertificateFiles::from_flags(None, None).unwrap(), None);
    }

    #[test]
    fn a_missing_file_is_named() {
        let files = CertificateFiles {
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
        };
        let message = files.load().unwrap_err().to_string();
        assert!(message.contains("/nonexistent/cert.pem"), "{message}");
    }
}

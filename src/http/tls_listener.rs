//! The TLS port as an axum listener: the connections `crate::tls::accept_connections` shook hands
//! with, so `axum::serve` keeps its graceful shutdown and long event streams over TLS as over
//! plain TCP.

use axum::serve::Listener;
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Connections that finished their TLS handshake, in the order they did.
pub struct TlsListener {
    connections: tokio::sync::mpsc::Receiver<crate::tls::TlsConnection>,
    local_address: SocketAddr,
}

impl TlsListener {
    /// Handshakes on `listener` with `certificate` (re-read when its files change).
    pub fn new(
        listener: tokio::net::TcpListener,
        certificate: &std::sync::Arc<crate::tls::ReloadingCertificate>,
    ) -> std::io::Result<TlsListener> {
        let local_address = listener.local_addr()?;
        Ok(TlsListener { connections: crate::tls::accept_connections(listener, certificate), local_address })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accepting task ended, which it does only once this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_address)
    }
}

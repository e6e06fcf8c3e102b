//! Optional mutual TLS on the cluster links (`[cluster.tls]`): the rustls
//! configs both ends use, and the listener that terminates TLS in front of
//! the cluster router.
//!
//! Both ends verify the other against the configured CA and nothing else: a
//! node presents its certificate as a client too, and the server refuses a
//! handshake without one. The client checks the server's certificate against
//! the peer's `rpc` IP address (the URL host), so node certificates carry IP
//! SANs. Only the `ring` crypto provider is used, passed in explicitly, so
//! the process-wide default provider is never consulted or installed.
//!
//! TLS adds confidentiality; it does not replace the HMAC on every request
//! ([`super::auth`]), which still decides who may talk to Raft.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::warn;

use crate::config::TlsConfig;

/// How long a peer may take to finish its TLS handshake before the
/// connection is dropped (a stalled peer must not hold a socket forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the accept loop rests after the OS refuses a connection (for
/// example when out of file descriptors), so it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The only protocol the cluster links speak.
const ALPN_H2: &[u8] = b"h2";

/// Why the TLS material could not be turned into a rustls config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no usable CA certificate: {0}")]
    Ca(String),
    #[error("the certificate and key cannot be used: {0}")]
    Identity(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(ca.iter().cloned());
    if added == 0 {
        return Err(TlsError::Ca(format!(
            "none of its {} certificate(s) is a valid X.509 CA certificate",
            added + ignored
        )));
    }
    Ok(Arc::new(roots))
}

/// The server side: requires a client certificate signed by the CA, speaks h2.
pub fn server_config(tls: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&tls.ca)?, provider())
        .build()
        .map_err(|e| TlsError::Ca(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Identity(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.cert_chain.clone(), tls.key.clone_key())
        .map_err(|e| TlsError::Identity(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The client side: trusts only the CA, presents this node's certificate, speaks h2.
pub fn client_config(tls: &TlsConfig) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Identity(e.to_string()))?
        .with_root_certificates(roots(&tls.ca)?)
        .with_client_auth_cert(tls.cert_chain.clone(), tls.key.clone_key())
        .map_err(|e| TlsError::Identity(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Checks that `tls` builds both configs (used by config validation, so a
/// key that does not match its certificate stops the node at load).
pub fn check(tls: &TlsConfig) -> Result<(), TlsError> {
    server_config(tls)?;
    client_config(tls)?;
    Ok(())
}

/// A TCP listener that hands out only connections whose TLS handshake
/// succeeded, for `axum::serve`.
///
/// Handshakes run concurrently in `handshakes`, owned by the listener and
/// aborted when it is dropped, so one slow peer never delays another's
/// connection. A failed handshake (a certificate from another CA, no
/// certificate, a cleartext client) is logged with the peer's address and
/// never ends the accept loop.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    /// Handshakes in flight; the listener is their only owner.
    handshakes: JoinSet<(SocketAddr, Result<TlsStream<TcpStream>, String>)>,
}

impl TlsListener {
    /// Terminates TLS with `config` on `tcp`.
    pub fn new(tcp: TcpListener, config: ServerConfig) -> TlsListener {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    // Cancel-safe, as `axum::serve` requires: `TcpListener::accept` and
    // `JoinSet::join_next` are, and everything else lives in `self`.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let acceptor = self.acceptor.clone();
                        self.handshakes.spawn(async move {
                            let outcome = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => Ok(tls),
                                Ok(Err(e)) => Err(e.to_string()),
                                Err(_) => Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
                            };
                            (peer, outcome)
                        });
                    }
                    Err(error) => {
                        warn!(%error, "cannot accept a cluster connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(done) = self.handshakes.join_next() => match done {
                    Ok((peer, Ok(tls))) => return (tls, peer),
                    Ok((peer, Err(error))) => {
                        warn!(%peer, %error, "refused a cluster connection: TLS handshake failed");
                    }
                    Err(error) => warn!(%error, "a TLS handshake task failed"),
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

//! Bare TLS clients of a witness's listener, for the tests that judge the handshake itself:
//! which certificates it accepts, which protocols it offers, which certificate it presents.

use std::net::SocketAddr;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::DEADLINE;

/// A gRPC channel to the witness at `addr` presenting `paths`' certificate (trusting their
/// CA), connected.
pub async fn channel(
    addr: impl std::fmt::Display,
    paths: &arbiter::tls::TlsPaths,
) -> tonic::transport::Channel {
    arbiter::tls::install_crypto_provider();
    let tls = arbiter::tls::TlsMaterial::load(paths).unwrap();
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls.client_config(Some("localhost")))
        .unwrap()
        .connect_timeout(DEADLINE)
        .connect()
        .await
        .unwrap()
}

/// A TLS 1.2 handshake with the witness at `addr` presenting `paths` (trusting their CA):
/// `Ok` once it completes, `Err` with the TLS error when the witness refuses us. TLS 1.2
/// because there the server judges the client certificate before its own `Finished`, so the
/// verdict is the handshake's outcome (in TLS 1.3 it comes after the client is done, and a
/// refusal may surface as a broken pipe of the client's next write).
pub async fn handshake_with_witness(
    addr: SocketAddr,
    paths: arbiter::tls::TlsPaths,
) -> Result<(), String> {
    served_chain(addr, paths).await.map(|_| ())
}

/// The certificate chain the witness at `addr` presents to a client of `paths` (a TLS 1.2
/// handshake as [`handshake_with_witness`]'s), leaf first.
pub async fn served_chain(
    addr: SocketAddr,
    paths: arbiter::tls::TlsPaths,
) -> Result<Vec<CertificateDer<'static>>, String> {
    tokio::task::spawn_blocking(move || {
        let config = rustls_client(&paths, true, &[&rustls::version::TLS12], &["h2"]);
        let name = ServerName::from(addr.ip());
        let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut sock = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
        // Only a guard against a hang: the witness answers at once either way.
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        while tls.is_handshaking() {
            tls.complete_io(&mut sock).map_err(|e| e.to_string())?;
        }
        Ok(tls
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.clone().into_owned())
            .collect())
    })
    .await
    .unwrap()
}

/// A rustls client configuration trusting `paths`' CA, presenting its certificate (none when
/// `present_certificate` is false), speaking `versions` of TLS and offering `alpn` (no ALPN
/// extension when empty).
pub fn rustls_client(
    paths: &arbiter::tls::TlsPaths,
    present_certificate: bool,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&str],
) -> rustls::ClientConfig {
    arbiter::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&paths.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(roots);
    let mut config = if present_certificate {
        let chain: Vec<_> = CertificateDer::pem_file_iter(&paths.cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&paths.key).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

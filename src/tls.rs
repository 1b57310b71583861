//! Mutual TLS for every connection to a witness: loading the cluster CA, our certificate and
//! key from PEM files, turning them into the one server configuration of the witness listener
//! (served by [`TlsIncoming`]) and a tonic client configuration, and naming the peer of an
//! incoming request: its common name for the audit log, and, for a witness, the node id its
//! certificate names (a URI SAN `arbiter://witness/<id>`, [`WITNESS_URI_PREFIX`]).
//!
//! This module owns TLS material and its validation. It must never accept a connection without
//! a client certificate signed by the cluster CA, never trust any root other than the cluster
//! CA (no system or web roots), and never log or return private key bytes.

mod incoming;
pub mod live;

pub use incoming::{
    Connection, RefusalReport, TlsIncoming, CONNECTIONS_PER_IDENTITY_MAX, HANDSHAKES_MAX,
    HANDSHAKE_TIMEOUT,
};
pub use live::{LiveTls, Reloaded, RELOAD_POLL};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use rustls::pki_types::pem::{self, PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The protocols the witness listener offers in ALPN, preferred first: `h2` for gRPC (and
/// HTTP/2 clients of the HTTP routes), and `http/1.1` for the clients of the HTTP routes
/// that speak only that, such as `curl --http1.1` in a hook script. A client that offers no
/// ALPN at all is served too (rustls refuses only a client whose offer shares none of them).
pub const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Installs rustls' ring crypto provider as the process default.
///
/// Idempotent and safe to call from any number of threads or tests: the first call installs
/// it, later calls do nothing. If some other provider was installed first it is left alone.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An Err means a default already exists; either way a provider is now in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Where a node's TLS files live, as written in its configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// PEM file holding the cluster CA certificate (the only trusted root).
    pub ca: PathBuf,
    /// PEM file holding our certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file holding our private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// What went wrong loading TLS material. Every variant names the offending file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file does not exist.
    #[error("{}: file not found", path.display())]
    Missing {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The file is not PEM, or its PEM is malformed.
    #[error("{}: not a PEM file: {reason}", path.display())]
    NotPem {
        /// The offending file.
        path: PathBuf,
        /// Why it is not acceptable PEM.
        reason: String,
    },
    /// The file is PEM but holds no certificate.
    #[error("{}: no certificate found", path.display())]
    NoCertificate {
        /// The offending file.
        path: PathBuf,
    },
    /// A certificate in the file is not valid X.509.
    #[error("{}: certificate does not parse: {reason}", path.display())]
    BadCertificate {
        /// The offending file.
        path: PathBuf,
        /// Why the certificate was rejected.
        reason: String,
    },
    /// The file is PEM but holds no private key.
    #[error("{}: no private key found", path.display())]
    NoKey {
        /// The offending file.
        path: PathBuf,
    },
    /// The private key is of an unsupported type or malformed.
    #[error("{}: private key is not usable: {reason}", path.display())]
    BadKey {
        /// The offending file.
        path: PathBuf,
        /// Why the key was rejected.
        reason: String,
    },
    /// The private key does not belong to the certificate.
    #[error("{}: private key does not match certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// Validated TLS material for one node or client: the cluster CA, our chain and our key.
///
/// Deliberately not `Debug`: it holds a private key.
#[derive(Clone)]
pub struct TlsMaterial {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    common_name: Option<String>,
    witness_id: Option<u64>,
    site: Option<String>,
    serial: Option<String>,
    /// The server configuration, built when loading so that whatever rustls finds wrong
    /// with the files is a load error naming the file, before any port is bound.
    server: Arc<ServerConfig>,
}

impl TlsMaterial {
    /// Reads the three PEM files named by `paths` and checks that each parses: the CA file
    /// holds at least one X.509 certificate, the cert file a chain of them, and the key file a
    /// private key that belongs to the leaf certificate. Then builds the server configuration
    /// from them ([`Self::server_config`]), so a CA certificate rustls cannot trust is an
    /// error here too.
    pub fn load(paths: &TlsPaths) -> Result<Self, TlsError> {
        Self::from_pem(paths, read_pem_files(paths)?)
    }

    /// [`Self::load`] of the files' contents already read (`[ca, cert, key]`); `paths`
    /// name them in errors.
    fn from_pem(
        paths: &TlsPaths,
        [ca_pem, cert_pem, key_pem]: [Vec<u8>; 3],
    ) -> Result<Self, TlsError> {
        let ca = parse_certificates(&paths.ca, &ca_pem)?;
        let chain = parse_certificates(&paths.cert, &cert_pem)?;
        let key = parse_key(&paths.key, &key_pem)?;

        let signing_key =
            rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::BadKey {
                path: paths.key.clone(),
                reason: e.to_string(),
            })?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            // rustls cannot tell for some key types; only a definite mismatch is an error.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(TlsError::KeyMismatch {
                    cert: paths.cert.clone(),
                    key: paths.key.clone(),
                })
            }
        }

        let names = names_of(&chain[0]);
        let leaf = crate::access::Caller::from_uris(None, &names.uris);
        let (common_name, witness_id, site, serial) =
            (names.common_name, leaf.witness, leaf.site, names.serial);
        let server = build_server_config(paths, ca, chain, key)?;
        Ok(Self {
            ca_pem,
            cert_pem,
            key_pem,
            common_name,
            witness_id,
            site,
            serial,
            server,
        })
    }

    /// Whether `pem` (`[ca, cert, key]` as read from the files) is what this material was
    /// made of.
    fn is_made_of(&self, pem: &[Vec<u8>; 3]) -> bool {
        self.ca_pem == pem[0] && self.cert_pem == pem[1] && self.key_pem == pem[2]
    }

    /// The serial number of our own certificate, lowercase hex (as the denylist stores it).
    pub fn serial(&self) -> Option<&str> {
        self.serial.as_deref()
    }

    /// The subject common name of our own certificate, if it has one.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The witness id our own certificate names ([`WITNESS_URI_PREFIX`]), if it names one.
    pub fn witness_id(&self) -> Option<u64> {
        self.witness_id
    }

    /// The site our own certificate names ([`SITE_URI_PREFIX`]), if it names exactly one.
    pub fn site(&self) -> Option<&str> {
        self.site.as_deref()
    }

    /// Server side, for [`TlsIncoming`]: presents our certificate, requires every client to
    /// present a certificate signed by the cluster CA, and offers [`SERVER_ALPN`].
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Client side: trusts only the cluster CA, expects the server to be `domain` (default:
    /// the host of the address dialled), and
    /// presents our certificate.
    pub fn client_config(&self, domain: Option<&str>) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(self.identity());
        match domain {
            Some(domain) => config.domain_name(domain),
            None => config,
        }
    }

    /// Who the witness at `addr` says it is: a TLS handshake as its peers make one (our
    /// certificate, only the cluster CA trusted, the address's host as the server name, ALPN
    /// `h2`), then the identity its certificate names. Nothing is sent after the handshake.
    pub async fn served_identity(
        &self,
        addr: &str,
        timeout: std::time::Duration,
    ) -> Result<crate::access::Caller, String> {
        let config = self
            .rustls_client()
            .map_err(|e| format!("our TLS material: {e}"))?;
        let host = match addr.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => return Err(format!("{addr} names no port")),
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host} is not a server name: {e}"))?;
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))
        };
        let tls = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| format!("no TLS handshake within {timeout:?}"))??;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or("it presented no certificate")?;
        let names = names_of(leaf);
        Ok(crate::access::Caller::from_uris(
            names.common_name,
            &names.uris,
        ))
    }

    /// A rustls client configuration of this material: our chain and key, only the
    /// cluster CA trusted, ALPN `h2`.
    fn rustls_client(&self) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let bad = |e: pem::Error| rustls::Error::General(e.to_string());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca_pem) {
            roots
                .add(cert.map_err(bad)?)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        }
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(bad)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// The one server configuration of the witness listener: our `chain` and `key`, client
/// authentication required and verified against the cluster CA `ca` alone, [`SERVER_ALPN`].
///
/// The ring provider is named rather than taken from the process default, so the
/// configuration does not depend on [`install_crypto_provider`] having run first.
fn build_server_config(
    paths: &TlsPaths,
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let bad_ca = |reason: String| TlsError::BadCertificate {
        path: paths.ca.clone(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert)
            .map_err(|e| bad_ca(format!("not usable as a trust anchor: {e}")))?;
    }
    // Not `allow_unauthenticated`: a client without a certificate is refused in the handshake.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad_ca(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::BadKey {
            path: paths.key.clone(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The subject common name of the certificate the peer presented on this request's
/// connection, or `None` when there is no TLS peer certificate or it has no readable CN.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    common_name_of(certs.first()?)
}

/// How a witness certificate names its node id: a URI SAN `arbiter://witness/<id>`. Only
/// such a certificate may speak the witness-to-witness protocol, and only as that id.
pub const WITNESS_URI_PREFIX: &str = "arbiter://witness/";

/// The URI SAN of witness `id`'s certificate.
pub fn witness_uri(id: u64) -> String {
    format!("{WITNESS_URI_PREFIX}{id}")
}

/// How a witness certificate names its site (failure domain): a URI SAN
/// `arbiter://site/<name>`. The node file's `site`, and the site `members add` gives, must
/// be the one the CA signed.
pub const SITE_URI_PREFIX: &str = "arbiter://site/";

/// The URI SAN of a witness certificate at site `site`.
pub fn site_uri(site: &str) -> String {
    format!("{SITE_URI_PREFIX}{site}")
}

/// What the access check reads of a certificate, from one parse of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    /// The subject common name, when it has a readable one.
    pub common_name: Option<String>,
    /// Every URI SAN (witness ids, roles), in certificate order.
    pub uris: Vec<String>,
    /// The serial number in the form the policy's denylist uses (lowercase hex, no leading
    /// zeros).
    pub serial: Option<String>,
}

/// The names of the certificate, parsed once (the access check runs on every request);
/// empty when it does not parse.
pub fn names_of(der: &CertificateDer<'_>) -> CertNames {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return CertNames::default();
    };
    let uris = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let hex: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    CertNames {
        common_name,
        uris,
        serial: crate::config::normalise_serial(&hex).ok(),
    }
}

/// Every URI SAN of the certificate (witness ids, roles), in certificate order.
pub fn uri_sans_of(der: &CertificateDer<'_>) -> Vec<String> {
    names_of(der).uris
}

/// The certificate's serial number as the policy's denylist writes it, when it parses.
pub fn serial_of(der: &CertificateDer<'_>) -> Option<String> {
    names_of(der).serial
}

/// The identity a certificate with no readable common name goes by, in the audit log, the
/// metrics and the per-identity connection limit alike.
pub const UNNAMED_IDENTITY: &str = "unknown";

/// The certificate's subject common name, when it has a readable one.
pub fn common_name_of(der: &CertificateDer<'_>) -> Option<String> {
    names_of(der).common_name
}

/// The contents of the CA, certificate and key files, in that order.
fn read_pem_files(paths: &TlsPaths) -> Result<[Vec<u8>; 3], TlsError> {
    Ok([
        read_file(&paths.ca)?,
        read_file(&paths.cert)?,
        read_file(&paths.key)?,
    ])
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TlsError::Missing {
            path: path.to_owned(),
        },
        _ => TlsError::Read {
            path: path.to_owned(),
            source,
        },
    })
}

/// All PEM sections of the file; errors when it is not PEM at all or the PEM is malformed.
fn pem_sections(path: &Path, bytes: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsError> {
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| TlsError::NotPem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if sections.is_empty() {
        return Err(TlsError::NotPem {
            path: path.to_owned(),
            reason: "no PEM sections found".into(),
        });
    }
    Ok(sections)
}

fn parse_certificates(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = pem_sections(path, bytes)?
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
            TlsError::BadCertificate {
                path: path.to_owned(),
                reason: e.to_string(),
            }
        })?;
    }
    Ok(certs)
}

fn parse_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    pem_sections(path, bytes)?
        .into_iter()
        .find_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der))
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    fn dev_paths(dir: &Path) -> TlsPaths {
        crate::certs::init_dev_certs(dir, &crate::certs::default_sites(1), &[], false)
            .unwrap()
            .nodes
            .remove(0)
    }

    #[test]
    fn install_crypto_provider_is_idempotent() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(install_crypto_provider))
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    #[test]
    fn load_accepts_dev_certs_and_reads_cn() {
        let dir = tempfile::tempdir().unwrap();
        let m = TlsMaterial::load(&dev_paths(dir.path())).unwrap();
        assert_eq!(m.common_name(), Some("node-1"));
    }

    #[test]
    fn load_names_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = dev_paths(dir.path());
        paths.key = dir.path().join("nope.key");
        let err = TlsMaterial::load(&paths).err().unwrap();
        assert!(matches!(err, TlsError::Missing { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("nope.key"), "{msg}");
        assert!(msg.contains("not found"), "{msg}");
    }

    #[test]
    fn load_rejects_non_pem() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = dev_paths(dir.path());
        paths.ca = write(dir.path(), "garbage.pem", b"hello world\n");
        let err = TlsMaterial::load(&paths).err().unwrap();
        assert!(matches!(err, TlsError::NotPem { .. }), "{err:?}");
        assert!(err.to_string().contains("garbage.pem"));
    }

    #[test]
    fn load_rejects_key_in_cert_slot_and_cert_in_key_slot() {
        let dir = tempfile::tempdir().unwrap();
        let good = dev_paths(dir.path());

        let mut paths = good.clone();
        paths.cert = good.key.clone();
        let err = TlsMaterial::load(&paths).err().unwrap();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("node-1.key"));

        let mut paths = good.clone();
        paths.key = good.cert.clone();
        let err = TlsMaterial::load(&paths).err().unwrap();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
        assert!(err.to_string().contains("node-1.pem"));
    }

    #[test]
    fn load_rejects_corrupt_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = dev_paths(dir.path());
        let bogus = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
        paths.cert = write(dir.path(), "bogus.pem", bogus.as_bytes());
        let err = TlsMaterial::load(&paths).err().unwrap();
        assert!(matches!(err, TlsError::BadCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("bogus.pem"));
    }

    #[test]
    fn load_rejects_mismatched_key() {
        let dir = tempfile::tempdir().unwrap();
        let files =
            crate::certs::init_dev_certs(dir.path(), &crate::certs::default_sites(2), &[], false)
                .unwrap();
        let mut paths = files.nodes[0].clone();
        paths.key = files.nodes[1].key.clone();
        let err = TlsMaterial::load(&paths).err().unwrap();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn tls_paths_deny_unknown_fields() {
        let ok: TlsPaths = toml::from_str("ca = \"a\"\ncert = \"b\"\nkey = \"c\"\n").unwrap();
        assert_eq!(ok.key, PathBuf::from("c"));
        let bad = toml::from_str::<TlsPaths>("ca = \"a\"\ncert = \"b\"\nkey = \"c\"\nkye = 1\n");
        assert!(bad.is_err());
    }

    #[test]
    fn peer_identity_is_none_without_tls() {
        let req = tonic::Request::new(());
        assert_eq!(peer_identity(&req), None);
    }
}

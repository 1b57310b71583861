//! Development certificate authority behind `arbiter certs init`: generates a throwaway cluster
//! CA plus one certificate per witness node and one operator client certificate, as PEM files.
//!
//! This module owns writing those files. It must never overwrite an existing file unless asked
//! to, never write a private key readable by anyone but its owner, and never be the source of
//! production certificates: a real deployment brings its own CA and issuance process.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::access::Role;
use crate::tls::TlsPaths;

/// Largest cluster `init_dev_certs` will issue node certificates for.
pub const MAX_NODES: u32 = 64;

/// Subject common name of the development admin certificate (`client.pem`).
pub const ADMIN_CN: &str = "admin";

/// Subject common name prefix of a development CA. A random suffix follows, so two
/// independently generated CAs have distinct names and a certificate from the wrong one is
/// reported as coming from an unknown issuer.
pub const DEV_CA_CN_PREFIX: &str = "arbiter development CA";

/// How long leaf (node and client) certificates are valid.
const LEAF_VALIDITY: Duration = Duration::days(365);
/// How long the development CA is valid.
const CA_VALIDITY: Duration = Duration::days(5 * 365);
/// Backdating of `not_before`, to tolerate clock skew between machines.
const BACKDATE: Duration = Duration::hours(1);

/// Hosts every node certificate is valid for, before any extra hosts.
const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The sites `certs init` names when none are given: witness `i` at
/// `DEFAULT_SITES[(i - 1) % 3]`, the demo's layout (two regions and a tiebreaker).
pub const DEFAULT_SITES: [&str; 3] = ["region-a", "region-b", "tiebreaker"];

/// The sites of witnesses `1..=nodes` when none are given ([`DEFAULT_SITES`], repeated).
pub fn default_sites(nodes: u32) -> Vec<String> {
    (0..nodes as usize)
        .map(|i| DEFAULT_SITES[i % DEFAULT_SITES.len()].to_string())
        .collect()
}

/// The files `init_dev_certs` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCerts {
    /// The CA certificate (`ca.pem`).
    pub ca_cert: PathBuf,
    /// The CA private key (`ca.key`).
    pub ca_key: PathBuf,
    /// For node `i` (1-based) at index `i - 1`: the CA, `node-i.pem` and `node-i.key`.
    pub nodes: Vec<TlsPaths>,
    /// The admin client (URI SAN `arbiter://role/admin`): the CA, `client.pem` and
    /// `client.key`, what the CLI uses by default.
    pub client: TlsPaths,
}

/// What went wrong generating development certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// An argument is out of range or malformed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The argument at fault.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A file to be written already exists and overwriting was not requested.
    #[error("{} already exists; refusing to overwrite it without --force", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// Creating the directory or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory being written.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// Key generation or signing failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// Which certificate or key was being generated.
        what: String,
        /// The underlying error.
        source: rcgen::Error,
    },
}

/// Generates a fresh development CA and certificates for one witness per entry of `sites`
/// (witness `i` at site `sites[i - 1]`) and one admin client, writing them as PEM into
/// `out` (created if needed).
///
/// **These certificates are for development and testing only.** The CA key is written next to
/// the certificates it signed, and nothing revokes or rotates them.
///
/// Files written: `ca.pem`, `ca.key`, `node-1.pem`, `node-1.key` … `node-N.pem`, `node-N.key`,
/// `client.pem`, `client.key`. Node certificates have subject CN `node-i`, are valid for
/// `localhost`, `127.0.0.1`, `::1` and every entry of `extra_hosts` (IP addresses become IP
/// SANs, anything else a DNS SAN), name their witness id as the URI SAN
/// `arbiter://witness/i` (the only identity the witness-to-witness protocol accepts) and its
/// site as `arbiter://site/NAME`, and allow both server and client authentication because
/// witnesses dial each other. The client
/// certificate has CN `admin`, names the admin role (URI SAN `arbiter://role/admin`: it may
/// do everything, `init` and the first `policy apply` included) and allows client
/// authentication only; [`issue_role_cert`] adds certificates of narrower roles. Private
/// keys are created with mode 0600.
///
/// Nothing is written unless every check passes: there must be 1 to 64 sites, each a valid
/// name, every extra host must be a valid name or address, and no target file may exist
/// unless `force` is set.
pub fn init_dev_certs(
    out: &Path,
    sites: &[String],
    extra_hosts: &[String],
    force: bool,
) -> Result<DevCerts, CertsError> {
    let nodes = sites.len() as u32;
    if !(1..=MAX_NODES).contains(&nodes) {
        return Err(CertsError::Invalid {
            field: "nodes",
            reason: format!("must be between 1 and {MAX_NODES}, got {nodes}"),
        });
    }
    for site in sites {
        check_site("sites", site)?;
    }
    let sans = node_sans(extra_hosts)?;

    let ca_cert = out.join("ca.pem");
    let ca_key = out.join("ca.key");
    let node_files: Vec<(PathBuf, PathBuf)> = (1..=nodes)
        .map(|i| {
            (
                out.join(format!("node-{i}.pem")),
                out.join(format!("node-{i}.key")),
            )
        })
        .collect();
    let client_cert = out.join("client.pem");
    let client_key = out.join("client.key");

    if !force {
        let all = [&ca_cert, &ca_key, &client_cert, &client_key]
            .into_iter()
            .chain(node_files.iter().flat_map(|(c, k)| [c, k]));
        for path in all {
            if path.exists() {
                return Err(CertsError::Exists { path: path.clone() });
            }
        }
    }

    // Generate everything before touching the disk, so a failure leaves nothing half-written.
    let now = OffsetDateTime::now_utc();
    let (ca_pem, issuer) = generate_ca(now)?;
    let mut leaves = Vec::with_capacity(node_files.len() + 1);
    for (i, site) in (1..=u64::from(nodes)).zip(sites) {
        leaves.push(witness_leaf(&issuer, now, i, site, sans.clone())?);
    }
    let client = generate_leaf(
        &issuer,
        now,
        ADMIN_CN,
        role_sans(ADMIN_CN, &[Role::Admin])?,
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )?;

    fs::create_dir_all(out).map_err(|source| CertsError::Io {
        path: out.to_owned(),
        source,
    })?;
    write_file(&ca_cert, ca_pem.as_bytes(), false, force)?;
    write_file(
        &ca_key,
        issuer.key().serialize_pem().as_bytes(),
        true,
        force,
    )?;
    for ((cert_path, key_path), (cert_pem, key_pem)) in node_files.iter().zip(&leaves) {
        write_file(cert_path, cert_pem.as_bytes(), false, force)?;
        write_file(key_path, key_pem.as_bytes(), true, force)?;
    }
    write_file(&client_cert, client.0.as_bytes(), false, force)?;
    write_file(&client_key, client.1.as_bytes(), true, force)?;

    let paths = |cert: &PathBuf, key: &PathBuf| TlsPaths {
        ca: ca_cert.clone(),
        cert: cert.clone(),
        key: key.clone(),
    };
    Ok(DevCerts {
        nodes: node_files.iter().map(|(c, k)| paths(c, k)).collect(),
        client: paths(&client_cert, &client_key),
        ca_cert: ca_cert.clone(),
        ca_key,
    })
}

/// Issues a client certificate of `name` naming `roles`, signed by the development CA in
/// `dir` (`ca.pem` and `ca.key`, as [`init_dev_certs`] wrote them), as `dir/<name>.pem` and
/// `dir/<name>.key`. `name` is the certificate's common name: the identity the audit log and
/// denials show. Nothing is written unless every check passes: `name` must be a valid name
/// (a-z, 0-9, '-'), `roles` must not be empty, and the files must not exist unless `force`.
pub fn issue_role_cert(
    dir: &Path,
    name: &str,
    roles: &[Role],
    force: bool,
) -> Result<TlsPaths, CertsError> {
    crate::config::check_name("name", name).map_err(|e| CertsError::Invalid {
        field: "name",
        reason: e.reason.clone(),
    })?;
    if roles.is_empty() {
        return Err(CertsError::Invalid {
            field: "roles",
            reason: format!("{name}: a certificate without a role can reach only /healthz"),
        });
    }
    let paths = TlsPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    if !force {
        for path in [&paths.cert, &paths.key] {
            if path.exists() {
                return Err(CertsError::Exists { path: path.clone() });
            }
        }
    }
    let issuer = dev_issuer(dir, name)?;
    let (cert_pem, key_pem) = generate_leaf(
        &issuer,
        OffsetDateTime::now_utc(),
        name,
        role_sans(name, roles)?,
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    // The key first, as for a witness ([`issue_witness_cert`]).
    write_file(&paths.key, key_pem.as_bytes(), true, force)?;
    write_file(&paths.cert, cert_pem.as_bytes(), false, force)?;
    Ok(paths)
}

/// The certificate of witness `id` (`node-ID`) at `site`: valid for `sans` (from
/// [`node_sans`]), naming its id as the URI SAN `arbiter://witness/ID` and its site as
/// `arbiter://site/SITE`, for both server and client authentication because witnesses dial
/// each other.
fn witness_leaf(
    issuer: &Issuer<'_, KeyPair>,
    now: OffsetDateTime,
    id: u64,
    site: &str,
    mut sans: Vec<SanType>,
) -> Result<(String, String), CertsError> {
    let name = format!("node-{id}");
    let eku = [
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    for uri in [crate::tls::witness_uri(id), crate::tls::site_uri(site)] {
        sans.push(SanType::URI(uri.try_into().map_err(|e| {
            CertsError::Generate {
                what: format!("certificate for {name}"),
                source: e,
            }
        })?));
    }
    generate_leaf(issuer, now, &name, sans, &eku)
}

fn check_site(field: &'static str, site: &str) -> Result<(), CertsError> {
    crate::config::check_name("site", site).map_err(|e| CertsError::Invalid {
        field,
        reason: format!("{site:?}: {}", e.reason),
    })
}

/// The development CA of `dir` (`ca.pem` and `ca.key`, as [`init_dev_certs`] wrote them).
fn dev_issuer(dir: &Path, what: &str) -> Result<Issuer<'static, KeyPair>, CertsError> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| CertsError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let generate = |source| CertsError::Generate {
        what: format!("certificate for {what}"),
        source,
    };
    let key = KeyPair::from_pem(&read(&dir.join("ca.key"))?).map_err(generate)?;
    Issuer::from_ca_cert_pem(&read(&dir.join("ca.pem"))?, key).map_err(generate)
}

/// Issues a new certificate for witness `id` at `site` (a rotation, or a witness added
/// later), signed by the development CA in `dir`, as `dir/node-ID.pem` and `dir/node-ID.key`,
/// valid for the default hosts and `extra_hosts`. Without `site`, the site the current
/// `node-ID.pem` names is kept (a rotation); a new witness needs one. With `force`, existing
/// files are replaced by renaming complete new ones over them, so a witness reloading its
/// files never reads a missing one.
pub fn issue_witness_cert(
    dir: &Path,
    id: u64,
    site: Option<&str>,
    extra_hosts: &[String],
    force: bool,
) -> Result<TlsPaths, CertsError> {
    if id == 0 {
        return Err(CertsError::Invalid {
            field: "witness",
            reason: "witness ids start at 1".into(),
        });
    }
    let sans = node_sans(extra_hosts)?;
    let paths = TlsPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("node-{id}.pem")),
        key: dir.join(format!("node-{id}.key")),
    };
    let site = match site {
        Some(site) => site.to_string(),
        None => current_site(&paths.cert).ok_or_else(|| CertsError::Invalid {
            field: "site",
            reason: format!(
                "witness {id}: {} names no site to keep; give the site of the new witness",
                paths.cert.display()
            ),
        })?,
    };
    check_site("site", &site)?;
    if !force {
        for path in [&paths.cert, &paths.key] {
            if path.exists() {
                return Err(CertsError::Exists { path: path.clone() });
            }
        }
    }
    let issuer = dev_issuer(dir, &format!("node-{id}"))?;
    let (cert_pem, key_pem) = witness_leaf(&issuer, OffsetDateTime::now_utc(), id, &site, sans)?;
    // The key first: until the certificate follows, a reload sees a pair that does not
    // match and keeps the current one.
    write_file(&paths.key, key_pem.as_bytes(), true, force)?;
    write_file(&paths.cert, cert_pem.as_bytes(), false, force)?;
    Ok(paths)
}

/// The site the certificate file at `path` names, if it exists and names one.
fn current_site(path: &Path) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let leaf = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .ok()?
        .next()?
        .ok()?;
    crate::access::Caller::from_uris(None, &crate::tls::names_of(&leaf).uris).site
}

/// The URI SANs naming `roles`.
fn role_sans(name: &str, roles: &[Role]) -> Result<Vec<SanType>, CertsError> {
    roles
        .iter()
        .map(|role| {
            role.uri()
                .try_into()
                .map(SanType::URI)
                .map_err(|source| CertsError::Generate {
                    what: format!("certificate for {name}"),
                    source,
                })
        })
        .collect()
}

/// The SANs of every node certificate: the defaults plus `extra_hosts`, without duplicates.
fn node_sans(extra_hosts: &[String]) -> Result<Vec<SanType>, CertsError> {
    let mut sans = Vec::new();
    let hosts = DEFAULT_HOSTS
        .iter()
        .copied()
        .chain(extra_hosts.iter().map(String::as_str));
    for host in hosts {
        let invalid = |reason: String| CertsError::Invalid {
            field: "extra_hosts",
            reason: format!("{host:?}: {reason}"),
        };
        let host = host.trim();
        if host.is_empty() {
            return Err(invalid("empty host name".into()));
        }
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                if host.contains(|c: char| c.is_whitespace() || c == '/' || c == ':') {
                    return Err(invalid("not a host name or IP address".into()));
                }
                SanType::DnsName(
                    host.try_into()
                        .map_err(|e: rcgen::Error| invalid(e.to_string()))?,
                )
            }
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

fn generate_ca(now: OffsetDateTime) -> Result<(String, Issuer<'static, KeyPair>), CertsError> {
    let err = |source| CertsError::Generate {
        what: "CA".into(),
        source,
    };
    let mut params = CertificateParams::default();
    let name = format!("{DEV_CA_CN_PREFIX} {:08x}", rand::random::<u32>());
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// Returns `(certificate PEM, private key PEM)` for a leaf signed by `issuer`.
fn generate_leaf(
    issuer: &Issuer<'_, KeyPair>,
    now: OffsetDateTime,
    common_name: &str,
    sans: Vec<SanType>,
    eku: &[ExtendedKeyUsagePurpose],
) -> Result<(String, String), CertsError> {
    let err = |source| CertsError::Generate {
        what: format!("certificate for {common_name}"),
        source,
    };
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = eku.to_vec();
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_VALIDITY;
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, issuer).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `contents` to `path`. Secret files are created with mode 0600 from the start, so
/// their contents are never readable by others, even briefly. With `force`, the complete
/// file is written beside `path` and renamed over it: a process reading `path` meanwhile
/// (a witness reloading its certificate) sees the old file or the new one, never a missing
/// or half-written one, and a pre-existing file's looser mode is not inherited.
fn write_file(path: &Path, contents: &[u8], secret: bool, force: bool) -> Result<(), CertsError> {
    if force {
        let mut staged = path.as_os_str().to_owned();
        staged.push(".new");
        let staged = PathBuf::from(staged);
        match fs::remove_file(&staged) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CertsError::Io {
                    path: staged,
                    source,
                })
            }
        }
        create_file(&staged, contents, secret)?;
        return fs::rename(&staged, path).map_err(|source| CertsError::Io {
            path: path.to_owned(),
            source,
        });
    }
    create_file(path, contents, secret)
}

/// Creates `path`, which must not exist, holding `contents`, synced.
fn create_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertsError> {
    let io_err = |source| CertsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = opts.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            CertsError::Exists {
                path: path.to_owned(),
            }
        } else {
            io_err(e)
        }
    })?;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    fn cn_and_sans(pem_path: &Path) -> (String, Vec<String>, bool) {
        let pem = fs::read(pem_path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        let sans = cert
            .subject_alternative_name()
            .unwrap()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        GeneralName::DNSName(name) => name.to_string(),
                        GeneralName::IPAddress(b) if b.len() == 4 => {
                            IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()
                        }
                        GeneralName::IPAddress(b) if b.len() == 16 => {
                            IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string()
                        }
                        GeneralName::URI(uri) => uri.to_string(),
                        other => format!("{other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        (cn, sans, cert.is_ca())
    }

    #[test]
    fn writes_all_files_with_expected_names() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let hosts = vec!["witness-a.example".to_string(), "10.0.0.7".to_string()];
        let files = init_dev_certs(&out, &default_sites(3), &hosts, false).unwrap();
        assert_eq!(files.nodes.len(), 3);
        assert_eq!(files.ca_cert, out.join("ca.pem"));
        assert_eq!(files.nodes[2].cert, out.join("node-3.pem"));
        assert_eq!(files.nodes[2].key, out.join("node-3.key"));
        assert_eq!(files.client.cert, out.join("client.pem"));

        let (cn, _, is_ca) = cn_and_sans(&files.ca_cert);
        assert!(cn.starts_with(DEV_CA_CN_PREFIX), "{cn}");
        assert!(is_ca);

        let (cn, sans, is_ca) = cn_and_sans(&files.nodes[1].cert);
        assert_eq!(cn, "node-2");
        assert!(!is_ca);
        assert_eq!(
            sans,
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "witness-a.example",
                "10.0.0.7",
                "arbiter://witness/2",
                "arbiter://site/region-b"
            ]
        );
        let node2 = crate::tls::TlsMaterial::load(&files.nodes[1]).unwrap();
        assert_eq!(node2.witness_id(), Some(2));

        let (cn, sans, _) = cn_and_sans(&files.client.cert);
        assert_eq!(cn, ADMIN_CN);
        assert_eq!(
            sans,
            ["arbiter://role/admin"],
            "the client certificate names the admin role and no witness"
        );
        let client = crate::tls::TlsMaterial::load(&files.client).unwrap();
        assert_eq!(client.witness_id(), None);
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = init_dev_certs(dir.path(), &default_sites(2), &[], false).unwrap();
        let keys = [&files.ca_key, &files.client.key]
            .into_iter()
            .chain(files.nodes.iter().map(|n| &n.key));
        for key in keys {
            let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        // Keys keep 0600 when overwritten with --force, even if the old file was looser.
        fs::set_permissions(&files.ca_key, fs::Permissions::from_mode(0o644)).unwrap();
        init_dev_certs(dir.path(), &default_sites(2), &[], true).unwrap();
        let mode = fs::metadata(&files.ca_key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let first = init_dev_certs(dir.path(), &default_sites(1), &[], false).unwrap();
        let before = fs::read(&first.ca_cert).unwrap();

        let err = init_dev_certs(dir.path(), &default_sites(1), &[], false).unwrap_err();
        assert!(matches!(err, CertsError::Exists { .. }), "{err:?}");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        assert_eq!(fs::read(&first.ca_cert).unwrap(), before, "ca.pem changed");

        // Only one conflicting file is enough to refuse, and the error names it.
        fs::remove_file(&first.ca_cert).unwrap();
        fs::remove_file(&first.ca_key).unwrap();
        let err = init_dev_certs(dir.path(), &default_sites(1), &[], false).unwrap_err();
        assert!(err.to_string().contains("client.pem"), "{err}");
        assert!(!first.ca_cert.exists(), "nothing is written on refusal");

        let second = init_dev_certs(dir.path(), &default_sites(1), &[], true).unwrap();
        assert_ne!(fs::read(&second.ca_cert).unwrap(), before);
    }

    #[test]
    fn node_count_must_be_in_range() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [0, MAX_NODES + 1] {
            let err = init_dev_certs(dir.path(), &default_sites(bad), &[], false).unwrap_err();
            assert!(matches!(err, CertsError::Invalid { field: "nodes", .. }));
            assert!(err.to_string().contains("nodes"), "{err}");
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn bad_extra_host_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "two words", "h\u{e9}te"] {
            let err = init_dev_certs(dir.path(), &default_sites(1), &[bad.to_string()], false)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    CertsError::Invalid {
                        field: "extra_hosts",
                        ..
                    }
                ),
                "{bad:?}: {err:?}"
            );
        }
    }

    /// Goal: a role certificate is signed by the directory's CA, names its roles and its
    /// name, is refused without a role or with a bad name, and is not overwritten unasked.
    #[test]
    fn role_certificates_name_their_roles_and_chain_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        init_dev_certs(dir.path(), &default_sites(1), &[], false).unwrap();
        let agent = Role::Agent {
            group: "checkout".into(),
            region: "region-a".into(),
        };
        let paths =
            issue_role_cert(dir.path(), "agent-a", std::slice::from_ref(&agent), false).unwrap();
        let (cn, sans, is_ca) = cn_and_sans(&paths.cert);
        assert_eq!(cn, "agent-a");
        assert_eq!(sans, ["arbiter://role/agent/checkout/region-a"]);
        assert!(!is_ca);
        // It loads against the CA (key matches, chain parses).
        crate::tls::TlsMaterial::load(&paths).unwrap();

        let err = issue_role_cert(dir.path(), "agent-a", &[agent], false).unwrap_err();
        assert!(matches!(err, CertsError::Exists { .. }), "{err}");
        let err = issue_role_cert(dir.path(), "Bad Name", &[Role::Viewer], false).unwrap_err();
        assert!(
            matches!(err, CertsError::Invalid { field: "name", .. }),
            "{err}"
        );
        let err = issue_role_cert(dir.path(), "nobody", &[], false).unwrap_err();
        assert!(
            matches!(err, CertsError::Invalid { field: "roles", .. }),
            "{err}"
        );
        assert!(!dir.path().join("nobody.pem").exists());
        let other = tempfile::tempdir().unwrap();
        let err = issue_role_cert(other.path(), "alice", &[Role::Viewer], false).unwrap_err();
        assert!(err.to_string().contains("ca.key"), "{err}");
    }

    /// Goal: every witness certificate names the site it was issued for; a rotation keeps
    /// it, a new witness must be given one, and a bad site is refused before anything is
    /// written.
    #[test]
    fn witness_certificates_name_their_site() {
        let dir = tempfile::tempdir().unwrap();
        let sites: Vec<String> = ["region-a", "region-a", "tiebreaker"]
            .map(String::from)
            .into();
        let files = init_dev_certs(dir.path(), &sites, &[], false).unwrap();
        let site_of = |paths: &TlsPaths| {
            let tls = crate::tls::TlsMaterial::load(paths).unwrap();
            (tls.witness_id(), tls.site().map(str::to_string))
        };
        for (i, node) in files.nodes.iter().enumerate() {
            assert_eq!(site_of(node), (Some(i as u64 + 1), Some(sites[i].clone())));
        }
        let (_, sans, _) = cn_and_sans(&files.nodes[2].cert);
        assert!(
            sans.contains(&"arbiter://site/tiebreaker".to_string()),
            "{sans:?}"
        );

        // A rotation without a site keeps the one the current certificate names.
        let rotated = issue_witness_cert(dir.path(), 3, None, &[], true).unwrap();
        assert_eq!(site_of(&rotated), (Some(3), Some("tiebreaker".into())));
        let moved = issue_witness_cert(dir.path(), 3, Some("region-b"), &[], true).unwrap();
        assert_eq!(site_of(&moved), (Some(3), Some("region-b".into())));
        // A new witness has no certificate to keep a site from.
        let err = issue_witness_cert(dir.path(), 4, None, &[], false).unwrap_err();
        assert!(
            matches!(err, CertsError::Invalid { field: "site", .. }),
            "{err}"
        );
        let err = issue_witness_cert(dir.path(), 4, Some("Region A"), &[], false).unwrap_err();
        assert!(
            matches!(err, CertsError::Invalid { field: "site", .. }),
            "{err}"
        );
        let err = init_dev_certs(dir.path(), &["ok".into(), "".into()], &[], true).unwrap_err();
        assert!(
            matches!(err, CertsError::Invalid { field: "sites", .. }),
            "{err}"
        );
        assert!(!dir.path().join("node-4.pem").exists());
        assert_eq!(site_of(&files.nodes[0]).1.as_deref(), Some("region-a"));
    }

    #[test]
    fn duplicate_hosts_are_collapsed() {
        let sans = node_sans(&["localhost".into(), "127.0.0.1".into(), "a.b".into()]).unwrap();
        assert_eq!(sans.len(), 4);
    }
}

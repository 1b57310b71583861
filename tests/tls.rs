//! Mutual TLS end to end: a real tonic server on loopback behind the witness listener's TLS
//! (`TlsIncoming`), serving the standard gRPC health service with a node certificate from a
//! development CA, probed by clients holding various certificates and offering various ALPN
//! protocols. Every wait is bounded by a deadline.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbiter::certs::{init_dev_certs, DevCerts};
use arbiter::tls::{install_crypto_provider, peer_identity, TlsIncoming, TlsMaterial};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Server};

use common::chain;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::{HealthReporter, HealthService};

/// Upper bound for any single client interaction, connect included.
const DEADLINE: Duration = Duration::from_secs(10);

/// Two independent development CAs, each with one node and the operator client.
struct Cluster {
    _dir: tempfile::TempDir,
    ca1: DevCerts,
    ca2: DevCerts,
}

fn two_cas() -> Cluster {
    install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca1 = init_dev_certs(
        &dir.path().join("ca1"),
        &arbiter::certs::default_sites(1),
        &[],
        false,
    )
    .unwrap();
    let ca2 = init_dev_certs(
        &dir.path().join("ca2"),
        &arbiter::certs::default_sites(1),
        &[],
        false,
    )
    .unwrap();
    Cluster {
        _dir: dir,
        ca1,
        ca2,
    }
}

/// A running health server that records the peer identity of every request it saw.
struct TestServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Option<String>>>>,
    /// The identities of the connections closed at the per-identity limit.
    refused: Arc<Mutex<Vec<String>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start(node: &TlsMaterial) -> Self {
        Self::start_with_handshake_timeout(node, arbiter::tls::HANDSHAKE_TIMEOUT).await
    }

    async fn start_with_handshake_timeout(node: &TlsMaterial, handshake_timeout: Duration) -> Self {
        // Bound before the server task starts, so clients can connect immediately: the
        // kernel queues their connections until the server accepts them.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let health = HealthServer::with_interceptor(
            HealthService::from_health_reporter(HealthReporter::new()),
            move |req: tonic::Request<()>| {
                record.lock().unwrap().push(peer_identity(&req));
                Ok(req)
            },
        );

        let refused = Arc::new(Mutex::new(Vec::new()));
        let report = Arc::clone(&refused);
        let (tx, rx) = oneshot::channel::<()>();
        let server = Server::builder().add_service(health);
        let incoming = TlsIncoming::new(listener, node.server_config())
            .with_handshake_timeout(handshake_timeout)
            .on_refused(Arc::new(move |identity: &str| {
                report.lock().unwrap().push(identity.to_string())
            }));
        let task = tokio::spawn(server.serve_with_incoming_shutdown(incoming, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            seen,
            refused,
            shutdown: Some(tx),
            task,
        }
    }

    fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
    }

    fn refused(&self) -> Vec<String> {
        self.refused.lock().unwrap().clone()
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("server did not shut down in time")
            .unwrap()
            .unwrap();
    }
}

/// Connects with `tls` and asks for overall health. Refusals are reported as the full error
/// chain, so assertions can look at the cause.
async fn check(addr: SocketAddr, tls: ClientTlsConfig) -> Result<ServingStatus, String> {
    connect_and_check(addr, tls).await.map(|(status, _)| status)
}

/// [`check`], also returning the client, whose connection stays open while it is held.
async fn connect_and_check(
    addr: SocketAddr,
    tls: ClientTlsConfig,
) -> Result<(ServingStatus, HealthClient<tonic::transport::Channel>), String> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(DEADLINE)
        .timeout(DEADLINE);
    let attempt = async {
        let channel = endpoint.connect().await.map_err(|e| chain(&e))?;
        let mut health = HealthClient::new(channel);
        let reply = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|e| chain(&e))?;
        Ok((reply.into_inner().status(), health))
    };
    tokio::time::timeout(DEADLINE, attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

fn load(paths: &arbiter::tls::TlsPaths) -> TlsMaterial {
    TlsMaterial::load(paths).unwrap()
}

fn ca_only(ca: &Path) -> Certificate {
    Certificate::from_pem(std::fs::read(ca).unwrap())
}

#[tokio::test]
async fn client_of_same_ca_is_served_and_identified() {
    let c = two_cas();
    let server = TestServer::start(&load(&c.ca1.nodes[0])).await;

    let client = load(&c.ca1.client);
    let status = check(server.addr, client.client_config(Some("localhost"))).await;
    assert_eq!(status, Ok(ServingStatus::Serving));
    assert_eq!(server.seen(), vec![Some("admin".to_string())]);

    // A witness dialling another witness presents its node certificate.
    let node = load(&c.ca1.nodes[0]);
    let status = check(server.addr, node.client_config(Some("127.0.0.1"))).await;
    assert_eq!(status, Ok(ServingStatus::Serving));
    assert_eq!(server.seen().last(), Some(&Some("node-1".to_string())));

    server.stop().await;
}

#[tokio::test]
async fn client_cert_from_other_ca_is_refused() {
    let c = two_cas();
    let server = TestServer::start(&load(&c.ca1.nodes[0])).await;

    // Trusts the right root, but its own certificate was signed by the other CA.
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca_only(&c.ca1.ca_cert))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(&c.ca2.client.cert).unwrap(),
            std::fs::read(&c.ca2.client.key).unwrap(),
        ))
        .domain_name("localhost");
    let err = check(server.addr, tls)
        .await
        .expect_err("client with a foreign certificate was served");
    assert!(
        err.contains("UnknownCA"),
        "server should reject the issuer: {err}"
    );
    assert!(server.seen().is_empty(), "request reached the service");

    server.stop().await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let c = two_cas();
    let server = TestServer::start(&load(&c.ca1.nodes[0])).await;

    let tls = ClientTlsConfig::new()
        .ca_certificate(ca_only(&c.ca1.ca_cert))
        .domain_name("localhost");
    let err = check(server.addr, tls)
        .await
        .expect_err("client without a certificate was served");
    assert!(
        err.contains("CertificateRequired"),
        "server should demand a certificate: {err}"
    );
    assert!(server.seen().is_empty(), "request reached the service");

    server.stop().await;
}

#[tokio::test]
async fn client_refuses_server_from_other_ca() {
    let c = two_cas();
    let server = TestServer::start(&load(&c.ca1.nodes[0])).await;

    // A fully valid client of CA #2 must not accept CA #1's server.
    let other = load(&c.ca2.client);
    let err = check(server.addr, other.client_config(Some("localhost")))
        .await
        .expect_err("client accepted a server from another CA");
    assert!(
        err.contains("UnknownIssuer"),
        "client should reject the server's issuer: {err}"
    );
    assert!(server.seen().is_empty(), "request reached the service");

    server.stop().await;
}

#[tokio::test]
async fn client_refuses_server_under_wrong_name() {
    let c = two_cas();
    let server = TestServer::start(&load(&c.ca1.nodes[0])).await;

    let client = load(&c.ca1.client);
    let err = check(
        server.addr,
        client.client_config(Some("witness.elsewhere.example")),
    )
    .await
    .expect_err("client accepted a server certificate not valid for the name");
    assert!(err.contains("not valid for name"), "{err}");

    server.stop().await;
}

/// A TLS handshake with `addr` offering `alpn` (no ALPN extension when empty), presenting
/// `client`'s certificate and trusting its CA: the protocol the server chose, or the error.
async fn negotiate(
    addr: SocketAddr,
    client: &arbiter::tls::TlsPaths,
    alpn: &[&str],
) -> Result<Option<String>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&client.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(&client.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&client.key).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let tls = connector
            .connect(ServerName::from(addr.ip()), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let chosen = tls.get_ref().1.alpn_protocol();
        Ok(chosen.map(|p| String::from_utf8_lossy(p).into_owned()))
    };
    tokio::time::timeout(DEADLINE, attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Goal: the listener serves HTTP/1.1-only clients (a hook script's `curl --http1.1`) as
/// well as gRPC: it offers `h2` and `http/1.1` in ALPN, preferring `h2`, and serves a client
/// that offers no ALPN at all; a client offering only protocols it does not speak is refused
/// in the handshake.
/// Method: TLS handshakes with the operator certificate, each offering one list; the
/// protocol the server chose, or its refusal.
#[tokio::test]
async fn alpn_offers_h2_and_http1_and_accepts_clients_without_alpn() {
    let c = two_cas();
    let server = TestServer::start(&load(&c.ca1.nodes[0])).await;

    for (offered, chosen) in [
        (&["h2", "http/1.1"][..], Some("h2")),
        (&["http/1.1", "h2"], Some("h2")),
        (&["h2"], Some("h2")),
        (&["http/1.1"], Some("http/1.1")),
        (&[], None),
    ] {
        let got = negotiate(server.addr, &c.ca1.client, offered).await;
        assert_eq!(got, Ok(chosen.map(str::to_owned)), "offering {offered:?}");
    }
    let err = negotiate(server.addr, &c.ca1.client, &["spdy/3.1"])
        .await
        .expect_err("a client offering no protocol the server speaks was served");
    assert!(err.contains("NoApplicationProtocol"), "{err}");

    server.stop().await;
}

/// Goal: a client that connects and never completes its handshake neither holds up anyone
/// else nor keeps its connection: the listener closes it once the handshake time is up.
/// Method: a server whose handshakes may take 2 s; a TCP connection that sends nothing;
/// while it is still open, a health check with the operator certificate is served; then the
/// silent connection reads end-of-file, no sooner than 2 s and before the default limit.
#[tokio::test]
async fn a_silent_client_holds_up_no_one_and_is_cut_off_after_the_handshake_time() {
    use tokio::io::AsyncReadExt;
    let handshake_timeout = Duration::from_secs(2);
    let c = two_cas();
    let server =
        TestServer::start_with_handshake_timeout(&load(&c.ca1.nodes[0]), handshake_timeout).await;

    tracing::info!("--- a silent connection, then a client beside it");
    let opened = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let client = load(&c.ca1.client);
    let status = check(server.addr, client.client_config(Some("localhost"))).await;
    assert_eq!(
        status,
        Ok(ServingStatus::Serving),
        "served beside the silent client"
    );
    let mut buf = [0u8; 1];
    assert!(
        matches!(silent.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the client was served while the silent handshake was still waiting"
    );

    tracing::info!("--- the silent connection is closed when its handshake time is up");
    let read = tokio::time::timeout(DEADLINE, silent.read(&mut buf))
        .await
        .expect("the silent connection is closed within the deadline");
    let closed_after = opened.elapsed();
    // End of file, or a reset: either way the server gave up on it.
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        closed_after >= handshake_timeout && closed_after < arbiter::tls::HANDSHAKE_TIMEOUT,
        "closed after {closed_after:?}, not after the {handshake_timeout:?} it was given"
    );

    server.stop().await;
}

/// Goal: one certificate identity holds at most `CONNECTIONS_PER_IDENTITY_MAX` connections
/// open at once; the next is closed after its handshake and reported with its identity (what
/// the witness counts in its metrics), while other identities are still
/// served; once one of its connections closes, the identity may connect again. Method: the
/// operator certificate opens connections up to the limit, each answering a health check
/// and kept open; one more fails; a node certificate (another identity) is served; one of
/// the operator's connections is dropped and a new one is served (retried until the server
/// has seen the close, within the deadline).
#[tokio::test]
async fn one_identity_holds_at_most_the_connection_limit() {
    let c = two_cas();
    let server = TestServer::start(&load(&c.ca1.nodes[0])).await;
    let client = load(&c.ca1.client);
    let connect = || async {
        let (status, health) =
            connect_and_check(server.addr, client.client_config(Some("localhost"))).await?;
        assert_eq!(status, ServingStatus::Serving);
        Ok::<_, String>(health)
    };

    tracing::info!("--- at the limit: every connection served");
    let mut open = Vec::new();
    for i in 0..arbiter::tls::CONNECTIONS_PER_IDENTITY_MAX {
        let health = tokio::time::timeout(DEADLINE, connect())
            .await
            .unwrap_or_else(|_| panic!("connection {i} timed out"))
            .unwrap_or_else(|e| panic!("connection {i} at the limit refused: {e}"));
        open.push(health);
    }

    tracing::info!("--- one past the limit: closed");
    let past = tokio::time::timeout(DEADLINE, connect()).await;
    assert!(
        matches!(past, Ok(Err(_)) | Err(_)),
        "a connection past the limit was served"
    );
    let operator = server.seen()[0].clone().expect("the operator's identity");
    let refused = server.refused();
    assert!(
        !refused.is_empty() && refused.iter().all(|identity| *identity == operator),
        "the refusal is reported with the operator's identity: {refused:?}"
    );

    tracing::info!("--- another identity is served meanwhile");
    let node = load(&c.ca1.nodes[0]);
    assert_eq!(
        check(server.addr, node.client_config(Some("localhost"))).await,
        Ok(ServingStatus::Serving)
    );

    tracing::info!("--- a connection closed makes room again");
    open.pop();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout(DEADLINE, connect()).await {
            Ok(Ok(health)) => {
                open.push(health);
                break;
            }
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("no room after a connection closed: {:?}", other.err()),
        }
    }
    drop(open);
    server.stop().await;
}

/// Goal: at most `HANDSHAKES_MAX` handshakes are in progress at once: at the limit a client's
/// handshake is still served; one past it, the client waits (in the kernel's accept backlog)
/// until a handshake in progress ends, and is then served. Method: TCP connections that send
/// nothing hold handshakes open (the server gives them a minute); with one place left a
/// client is served; with none left a client's check has not finished after 2 s (no upper
/// bound on time is asserted: a slow machine only makes it wait longer); once one silent
/// connection closes, the waiting client is served within the deadline.
#[tokio::test]
async fn handshakes_in_progress_are_bounded_and_a_waiting_client_is_served_when_one_ends() {
    use arbiter::tls::HANDSHAKES_MAX;
    let c = two_cas();
    let server =
        TestServer::start_with_handshake_timeout(&load(&c.ca1.nodes[0]), Duration::from_secs(60))
            .await;
    let client = load(&c.ca1.client);
    let hold = |n: usize| {
        let addr = server.addr;
        async move {
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            }
            held
        }
    };

    tracing::info!("--- at the limit: one place left, a client is served");
    let mut silent = hold(HANDSHAKES_MAX - 1).await;
    assert_eq!(
        check(server.addr, client.client_config(Some("localhost"))).await,
        Ok(ServingStatus::Serving),
        "the last place was refused"
    );

    tracing::info!("--- past the limit: every place held, a client waits");
    // The served client's handshake has ended, so one place is free again: take it.
    silent.extend(hold(1).await);
    let addr = server.addr;
    let tls = client.client_config(Some("localhost"));
    let mut waiting = tokio::spawn(async move { check(addr, tls).await });
    let early = tokio::time::timeout(Duration::from_secs(2), &mut waiting).await;
    assert!(
        early.is_err(),
        "a handshake past the limit went ahead: {early:?}"
    );

    tracing::info!("--- a handshake ends: the waiting client is served");
    drop(silent.pop());
    let served = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the waiting client is served once a place is free")
        .unwrap();
    assert_eq!(served, Ok(ServingStatus::Serving));
    drop(silent);
    server.stop().await;
}

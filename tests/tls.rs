//! Mutual TLS end to end: a real tonic server on loopback, serving the standard gRPC health
//! service with a node certificate from a development CA, probed by clients holding various
//! certificates. Every wait is bounded by a deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbiter::certs::{init_dev_certs, DevCerts};
use arbiter::tls::{install_crypto_provider, peer_identity, TlsMaterial};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Server};
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
    let ca1 = init_dev_certs(&dir.path().join("ca1"), 1, &[], false).unwrap();
    let ca2 = init_dev_certs(&dir.path().join("ca2"), 1, &[], false).unwrap();
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
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start(node: &TlsMaterial) -> Self {
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

        let (tx, rx) = oneshot::channel::<()>();
        let server = Server::builder()
            .tls_config(node.server_config())
            .unwrap()
            .add_service(health);
        let task = tokio::spawn(server.serve_with_incoming_shutdown(
            TcpIncoming::from(listener),
            async move {
                let _ = rx.await;
            },
        ));
        TestServer {
            addr,
            seen,
            shutdown: Some(tx),
            task,
        }
    }

    fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
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
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(DEADLINE)
        .timeout(DEADLINE);
    let attempt = async {
        let channel = endpoint.connect().await.map_err(|e| chain(&e))?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|e| chain(&e))?;
        Ok(reply.into_inner().status())
    };
    tokio::time::timeout(DEADLINE, attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
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
    assert_eq!(server.seen(), vec![Some("operator".to_string())]);

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

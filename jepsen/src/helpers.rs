//! Small servers the harness runs inside the hosts' namespaces as `jepsen health-server` and
//! `jepsen proxy` (the same binary, so nothing else needs installing):
//!
//! - the health endpoint of a region, probed by every witness; the nemesis kills it to make
//!   the region `down` and trigger an automatic failover;
//! - a TCP proxy in front of each witness that delays every chunk by the number of
//!   milliseconds in its delay file (`tc netem` does not exist on these machines).
//!
//! They never decide anything; they do what their files say.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest request the health endpoint reads.
const REQUEST_BYTES_MAX: usize = 4_096;
/// Chunks in flight per direction of a proxied connection (bounds memory under delay).
const PROXY_QUEUE_CHUNKS: usize = 1_024;
/// Largest delay the proxy honours, whatever the file says.
const DELAY_MS_MAX: u64 = 10_000;
/// How often the proxy re-reads its delay file.
const DELAY_POLL: Duration = Duration::from_millis(100);

/// Answers `200 ok` to every HTTP request, one connection at a time, forever.
pub fn health_server(listen: &str) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(listen)?;
    eprintln!("health endpoint listening on {listen}");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; REQUEST_BYTES_MAX];
        let mut got = 0;
        // Read until the end of the headers, the buffer is full, or the peer stops.
        while got < buf.len() {
            match conn.read(&mut buf[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
        );
    }
    Ok(())
}

/// Forwards every connection on `listen` to `to`, delaying each chunk in both directions by
/// the milliseconds written in `delay_file` (missing or unreadable: no delay).
pub async fn proxy(listen: &str, to: &str, delay_file: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("proxy {listen} -> {to}, delay from {delay_file}");
    let delay = Arc::new(AtomicU64::new(0));
    {
        let delay = delay.clone();
        let file = delay_file.to_string();
        tokio::spawn(async move {
            loop {
                let ms = std::fs::read_to_string(&file)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0)
                    .min(DELAY_MS_MAX);
                delay.store(ms, Ordering::Relaxed);
                tokio::time::sleep(DELAY_POLL).await;
            }
        });
    }
    loop {
        let (inbound, _) = listener.accept().await?;
        let to = to.to_string();
        let delay = delay.clone();
        tokio::spawn(async move {
            let Ok(Ok(outbound)) =
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&to))
                    .await
            else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            let a = tokio::spawn(pump(ri, wo, delay.clone()));
            let b = tokio::spawn(pump(ro, wi, delay));
            let _ = tokio::join!(a, b);
        });
    }
}

/// Copies `from` to `to`, each chunk sent no earlier than its arrival plus the delay.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<AtomicU64>,
) {
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(PROXY_QUEUE_CHUNKS);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let at = tokio::time::Instant::now();
                    if tx.send((at, buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    while let Some((at, chunk)) = rx.recv().await {
        let ms = delay.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep_until(at + Duration::from_millis(ms)).await;
        }
        if to.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    reader.abort();
}

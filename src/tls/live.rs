//! TLS material that can be replaced while the process runs: certificate rotation without a
//! restart. [`LiveTls`] holds the material loaded from a node's or client's three PEM files
//! and a generation number; [`LiveTls::watch`] reloads it when the files change (polled every
//! [`RELOAD_POLL`]) or on SIGHUP. The listener ([`super::TlsIncoming::live`]) takes the
//! current server configuration for each new handshake, and the clients (the Raft network,
//! the CLI's and agents' [`crate::client::Client`]) rebuild their channels when the
//! generation moves, so every connection made after a reload presents and trusts the new
//! material. Connections already established keep their session until they close.
//!
//! It must never replace good material with material that does not load (a file half
//! written, a key that does not belong to the certificate, a witness certificate naming
//! another witness): that reload is refused, logged once per distinct reason, the current
//! material stays, and the next change is tried again. It never logs key bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::{read_pem_files, TlsError, TlsMaterial, TlsPaths};

/// How often [`LiveTls::watch`] looks at the files: rotation tools (an ACME client, a Vault
/// agent, a configuration push) replace them at any time, and a few seconds' delay before
/// new connections use them costs nothing (the old certificate stays valid meanwhile).
pub const RELOAD_POLL: Duration = Duration::from_secs(5);

/// Checks a freshly loaded material before it replaces the current one (a witness: the
/// certificate still names this witness's id). Returns why it is refused.
pub type Check = Box<dyn Fn(&TlsMaterial) -> Result<(), String> + Send + Sync>;

/// What a successful reload found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The files hold what is loaded already.
    Unchanged,
    /// New material is in place; connections made from now on use it.
    Replaced {
        /// The serial of the certificate now presented.
        serial: Option<String>,
    },
}

/// The TLS material of one process, replaceable at run time.
pub struct LiveTls {
    paths: TlsPaths,
    check: Option<Check>,
    current: RwLock<Arc<TlsMaterial>>,
    /// Moves by one at each replacement: users compare it to the one they built with.
    generation: AtomicU64,
    /// The reason of the last refused reload, so a file left broken is logged once, not
    /// every poll.
    last_refusal: Mutex<Option<String>>,
}

impl LiveTls {
    /// Loads the files named by `paths`; every later reload must pass `check` too (so must
    /// this first material: the caller checks it, with the error it prefers).
    pub fn new(paths: TlsPaths, material: TlsMaterial, check: Option<Check>) -> Arc<Self> {
        Arc::new(Self {
            paths,
            check,
            current: RwLock::new(Arc::new(material)),
            generation: AtomicU64::new(0),
            last_refusal: Mutex::new(None),
        })
    }

    /// Loads the files named by `paths` with no further check (a client's certificate).
    pub fn load(paths: &TlsPaths) -> Result<Arc<Self>, TlsError> {
        let material = TlsMaterial::load(paths)?;
        Ok(Self::new(paths.clone(), material, None))
    }

    /// The material in use now.
    pub fn current(&self) -> Arc<TlsMaterial> {
        self.current.read().expect("live TLS lock").clone()
    }

    /// How many times the material was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reads the files again and, if they changed and load and pass the check, puts the new
    /// material in place. On error the current material stays.
    pub fn reload(&self) -> Result<Reloaded, String> {
        let pem = read_pem_files(&self.paths).map_err(|e| e.to_string())?;
        if self.current().is_made_of(&pem) {
            return Ok(Reloaded::Unchanged);
        }
        let material = TlsMaterial::from_pem(&self.paths, pem).map_err(|e| e.to_string())?;
        if let Some(check) = &self.check {
            check(&material)?;
        }
        let serial = material.serial().map(str::to_string);
        *self.current.write().expect("live TLS lock") = Arc::new(material);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(Reloaded::Replaced { serial })
    }

    /// Reloads every `poll` and on each SIGHUP, logging what happened; runs until dropped.
    pub async fn watch(self: Arc<Self>, poll: Duration) {
        use tokio::signal::unix::{signal, SignalKind};
        // Installed first thing: SIGHUP's default action would end the process.
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: TLS files are still polled");
                None
            }
        };
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let trigger = tokio::select! {
                _ = tick.tick() => "files polled",
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
            };
            self.reload_and_log(trigger);
        }
    }

    /// [`Self::reload`], logged: a replacement at info, a refusal at warn the first time its
    /// reason is seen (a SIGHUP always logs its outcome).
    pub fn reload_and_log(&self, trigger: &str) {
        let cert = self.paths.cert.display().to_string();
        match self.reload() {
            Ok(Reloaded::Replaced { serial }) => {
                *self.last_refusal.lock().expect("refusal lock") = None;
                tracing::info!(
                    trigger,
                    cert = %cert,
                    serial = serial.as_deref().unwrap_or("?"),
                    generation = self.generation(),
                    "TLS certificate, key and CA reloaded: new connections use them"
                );
            }
            Ok(Reloaded::Unchanged) => {
                *self.last_refusal.lock().expect("refusal lock") = None;
                if trigger == "SIGHUP" {
                    tracing::info!(trigger, cert = %cert, "TLS files unchanged: nothing to reload");
                }
            }
            Err(reason) => {
                let mut last = self.last_refusal.lock().expect("refusal lock");
                if trigger == "SIGHUP" || last.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(
                        trigger,
                        error = %reason,
                        "TLS reload refused: the current certificate stays in use"
                    );
                }
                *last = Some(reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(dir: &std::path::Path, nodes: u32) -> crate::certs::DevCerts {
        crate::certs::init_dev_certs(dir, &crate::certs::default_sites(nodes), &[], false).unwrap()
    }

    /// Goal: a reload replaces the material only when the files changed and load, and a
    /// refused reload (half-written pair, failed check) keeps the current material.
    /// Method: node 1's files; node 2's certificate copied over node 1's (key mismatch),
    /// then its key too (passes loading, refused by a witness-id check), then accepted
    /// without the check.
    #[test]
    fn reload_replaces_only_good_changed_material() {
        let dir = tempfile::tempdir().unwrap();
        let files = dev(dir.path(), 2);
        let paths = files.nodes[0].clone();
        let witness_1: Check = Box::new(|m: &TlsMaterial| match m.witness_id() {
            Some(1) => Ok(()),
            other => Err(format!("names witness {other:?}, not 1")),
        });
        let original = TlsMaterial::load(&paths).unwrap();
        let live = LiveTls::new(paths.clone(), original.clone(), Some(witness_1));
        let first = live.current().serial().unwrap().to_string();
        assert_eq!(live.reload(), Ok(Reloaded::Unchanged));
        assert_eq!(live.generation(), 0);

        std::fs::copy(&files.nodes[1].cert, &paths.cert).unwrap();
        let err = live.reload().unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        std::fs::copy(&files.nodes[1].key, &paths.key).unwrap();
        let err = live.reload().unwrap_err();
        assert!(err.contains("names witness Some(2), not 1"), "{err}");
        assert_eq!(live.generation(), 0);
        assert_eq!(live.current().serial(), Some(first.as_str()));

        let unchecked = LiveTls::new(paths.clone(), original, None);
        let second = TlsMaterial::load(&files.nodes[1])
            .unwrap()
            .serial()
            .unwrap()
            .to_string();
        assert_eq!(
            unchecked.reload(),
            Ok(Reloaded::Replaced {
                serial: Some(second.clone())
            })
        );
        assert_eq!(unchecked.generation(), 1);
        assert_eq!(unchecked.current().serial(), Some(second.as_str()));
    }

    /// Goal: the watcher picks up changed files by itself within a few polls.
    /// Method: a 20 ms poll; the files replaced by another node's pair.
    #[tokio::test]
    async fn watch_picks_up_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = dev(dir.path(), 2);
        let paths = files.nodes[0].clone();
        let live = LiveTls::load(&paths).unwrap();
        let watcher = tokio::spawn(live.clone().watch(Duration::from_millis(20)));
        std::fs::copy(&files.nodes[1].cert, &paths.cert).unwrap();
        std::fs::copy(&files.nodes[1].key, &paths.key).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while live.generation() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(live.current().witness_id(), Some(2));
        watcher.abort();
    }
}

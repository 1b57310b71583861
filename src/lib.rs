//! arbiter: a failover arbiter for multi-region disaster recovery.
//!
//! A small Raft cluster of witnesses agrees, per failover group, on which region is active;
//! operators, tools and databases ask it who is active and whether an epoch is current.
//!
//! # Layout
//!
//! - [`config`]: the node file and the policy (probe specs, secret references and hook
//!   bounds included), parsed and validated into typed values.
//! - [`state`]: the replicated state machine, pure (no I/O): groups, epochs, modes, lease
//!   bounds, operations, the audit log (typed kinds, verdicts and states; the wire text is
//!   their names).
//! - [`raft`]: openraft glue. Type configuration, the redb-backed log and state-machine
//!   stores (on any redb backend), and the gRPC network between witnesses (or any openraft
//!   network, `Consensus::start_with`). openraft types never leave this module.
//! - [`health`]: region probes (the probe loop on each witness, behind `ProbeRunner`), the
//!   leader's table of probe reports, and the pure quorum verdict (`up`, `down`, `unknown`).
//! - [`agent`]: `arbiter agent`, the lease-holding sidecar that self-fences when its lease
//!   lapses.
//! - [`api`]: the public gRPC service `Arbiter` and the one mapping of errors to statuses.
//! - [`client`]: the client used by the CLI, the agent, the demo and tests: a typed method per
//!   call of the `Arbiter` service; follows the leader transparently.
//! - [`fencing`]: leases and fencing epochs: the `Fencing` gRPC service, the HTTP endpoints
//!   for hooks, and the holder-side lease client (deadline = send time + lease) behind
//!   `LeaseService`.
//! - [`hooks`]: runs a step's hook (an `exec` program, a signed `http` webhook or a built-in
//!   PostgreSQL action, behind `HookRunner`) with a deadline and bounded output, reads the lag an `rpo-check` hook
//!   reports, and keeps on every witness the last known WAL position of each group's
//!   PostgreSQL primary, which the built-in rpo-check measures against (S8).
//! - [`dns`]: publishing group records in DNS: one pure `Publication` of a committed state
//!   used by the embedded authoritative server of every witness, the `dns` step, the
//!   reconciler and `dns check`; RFC 2136 updates (TSIG-signed, behind `DnsClient`) of
//!   external servers, each conditional on the server's `_arbiter.` marker so an older
//!   decision never overwrites a newer one, and the drift check that reads back what they
//!   publish.
//! - [`leader`]: what a witness does as the Raft leader, under one term supervisor that
//!   confirms the leadership with a quorum: pure decisions (`decide`: automatic failover,
//!   failback, anti-flap; `plan`: each step's work and the lease wait), the executor of
//!   operations, the verdict duty, the DNS reconciler, the leader's in-memory tables; and
//!   what every witness does so it can become leader (probes and reports, observations).
//! - [`telemetry`]: Prometheus metrics of each witness (its own registry), `/metrics`,
//!   `/healthz` and `/readyz` (`docs/metrics.md`).
//! - [`node`]: one witness: wires storage, Raft, the network and the API on a bound listener,
//!   in a `World` of hooks, DNS servers, probes, a wall clock and storage it is given.
//! - [`access`]: who may do what: the roles a client certificate names (viewer, operator,
//!   admin, check, agent of one group and region), the table of what each RPC and route
//!   needs, and the middleware that refuses the rest before any handler runs.
//! - [`tls`]: mutual TLS material (cluster CA, node certificate and key), the witness
//!   listener's server configuration and handshakes (ALPN `h2` and `http/1.1`), the tonic
//!   client configuration, and the peer identity of a request (its common name, and the
//!   witness id a witness certificate names).
//! - [`codec`]: the protobuf codec of every service and client (prost's, with a malformed
//!   message answered `INVALID_ARGUMENT` naming the field).
//! - [`certs`]: the development CA behind `arbiter certs init`.
//! - [`demo`]: `arbiter demo`, a whole cluster with simulated regions in one process, and
//!   the live timeline of a failover.
//! - [`secret`]: reads a secret (TSIG key, webhook key, database password) from the file or
//!   environment variable its reference names, on this witness only.
//! - [`sites`]: failure domains of the witness membership, pure: which voter sets survive
//!   the loss of any one site, and which membership changes make that worse.
//! - [`wallclock`]: the wall clock for audit timestamps and reports, never for safety
//!   (`WallClock`: the system's, or a manual one for tests and simulations).
//! - [`cli`]: the `arbiter` command line (parsing and output; `main.rs` only calls it).
//! - `holes` (only with the `unsafe-holes` feature): safety holes put back on purpose, so
//!   jepsen's checkers can be shown to catch them.
//! - `model` (tests only): a checked model of the lease protocol. The real state machine
//!   driven through `apply`, with the leader's steps, agents on drifting clocks, databases
//!   and operator actions mirrored around it, explored exhaustively within bounds by
//!   `stateright`; S1 over the writes accepted and S2 hold in every reachable state.

pub mod access;
pub mod agent;
pub mod api;
pub mod certs;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod demo;
pub mod dns;
pub mod fencing;
pub mod health;
#[cfg(feature = "unsafe-holes")]
pub mod holes;
pub mod hooks;
#[cfg(test)]
mod input_props;
pub mod leader;
#[cfg(test)]
mod model;
pub mod node;
pub mod raft;
pub mod secret;
pub mod sites;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod wallclock;

/// Generated protobuf types and gRPC stubs (`proto/arbiter.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("arbiter.v1");

    /// One RPC the protocol file declares.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Rpc {
        /// Its service (`Raft`, `Arbiter`, `Fencing`), without the package.
        pub service: &'static str,
        /// Its name (`Failover`).
        pub rpc: &'static str,
        /// Its request is a stream of messages.
        pub client_streaming: bool,
        /// Its answer is a stream of messages.
        pub server_streaming: bool,
    }

    impl Rpc {
        /// Its gRPC path: `/arbiter.v1.Service/Rpc`.
        pub fn path(&self) -> String {
            format!("/arbiter.v1.{}/{}", self.service, self.rpc)
        }
    }

    /// Every RPC of `proto/arbiter.proto`, in its order, read from the file itself, so that
    /// the tables keyed by RPC (who may call it, how large its request may be) and the tests
    /// sending every RPC can be checked to miss none.
    pub fn rpcs() -> Vec<Rpc> {
        let mut service = "";
        let mut rpcs = Vec::new();
        for line in include_str!("../proto/arbiter.proto")
            .lines()
            .map(str::trim)
        {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap_or_default();
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let Some((rpc, rest)) = rest.split_once('(') else {
                    continue;
                };
                let Some((_, answer)) = rest.split_once("returns") else {
                    continue;
                };
                rpcs.push(Rpc {
                    service,
                    rpc: rpc.trim(),
                    client_streaming: rest.trim_start().starts_with("stream "),
                    server_streaming: answer
                        .trim_start()
                        .trim_start_matches('(')
                        .starts_with("stream "),
                });
            }
        }
        rpcs
    }
}

#!/usr/bin/env bash
# Starts a local 3-witness arbiter cluster on loopback (ports 7101-7103), initialises it,
# applies the example policy, fails the checkout group over to region-b and shows status.
#
#   deploy/local/run.sh                 # run the tour, then stop and clean up
#   deploy/local/run.sh --keep-running  # leave the cluster up until Ctrl-C
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
keep=false
[ "${1:-}" = "--keep-running" ] && keep=true

echo "==> building arbiter"
cargo build --quiet --manifest-path "$root/Cargo.toml" --bin arbiter
bin="$root/target/debug/arbiter"

work=$(mktemp -d -t arbiter-local.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

cp "$here"/node-*.toml "$work/"
"$bin" certs init --out "$work/certs" --nodes 3 >/dev/null 2>&1
export ARBITER_TLS_DIR="$work/certs"
export ARBITER_SERVERS="127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"

echo "==> starting 3 witnesses (logs in $work/node-N.log)"
for i in 1 2 3; do
  "$bin" serve --config "$work/node-$i.toml" 2>"$work/node-$i.log" &
  pids+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 1 100); do
    "$bin" status --local --server "127.0.0.1:710$i" >/dev/null 2>&1 && break
    sleep 0.1
  done
done

echo "==> arbiter init"
"$bin" init
echo "==> arbiter policy apply --dry-run"
"$bin" policy apply --dry-run "$here/policy.toml"
echo "==> arbiter policy apply"
"$bin" policy apply "$here/policy.toml"
echo "==> arbiter status"
"$bin" status
echo "==> arbiter failover checkout --to region-b --reason 'local tour'"
"$bin" failover checkout --to region-b --reason "local tour"
echo "==> arbiter status"
"$bin" status

if $keep; then
  cat <<MSG

The cluster keeps running. In another shell:
  export ARBITER_TLS_DIR=$work/certs ARBITER_SERVERS=$ARBITER_SERVERS
  $bin status
  $bin watch
  $bin failover checkout --to region-a --reason "back home"
Press Ctrl-C to stop the witnesses and remove $work.
MSG
  wait
fi

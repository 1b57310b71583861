#!/usr/bin/env bash
# Assembles the arbiter container image without a container engine and without pulling any
# base image:
#
#   1. builds the release binary (or takes --binary PATH); --static links glibc statically
#      (then no library is copied; see README.md for what that changes);
#   2. writes OUT/rootfs: the binary, exactly the shared libraries `ldd` says it loads (with
#      the dynamic loader), the system CA bundle, /etc/passwd and /etc/group for user 65532,
#      /etc/nsswitch.conf, and an empty /var/lib/arbiter and /tmp;
#   3. checks that the binary runs inside that root (chroot, when run as root);
#   4. writes OUT/arbiter-oci.tar: an OCI image layout (one uncompressed layer, config,
#      manifest, index) that `podman load`, `skopeo copy oci-archive:...` or a registry push
#      tool accept, built with tar and sha256sum only.
#
# OUT/ is also the build context of deploy/container/Containerfile for an engine (`podman
# build`, `docker build`, `buildah bud`), which gives the same file tree.
#
#   deploy/container/build.sh [--static | --binary PATH] [--out DIR] [--tag NAME:VERSION]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
binary=""
static=false
out="$here/build"
tag="arbiter:0.1.0"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --static) static=true; shift ;;
    --out) out=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "usage: $0 [--static | --binary PATH] [--out DIR] [--tag NAME:VERSION]" >&2; exit 64 ;;
  esac
done

if [ -z "$binary" ] && $static; then
  # An explicit --target keeps build scripts and proc-macros dynamically linked.
  target=x86_64-unknown-linux-gnu
  echo "==> cargo build --release --target $target --bin arbiter (+crt-static)"
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" cargo build --release --locked \
    --quiet --manifest-path "$root/Cargo.toml" --target "$target" --bin arbiter
  binary="$root/target/$target/release/arbiter"
elif [ -z "$binary" ]; then
  echo "==> cargo build --release --bin arbiter"
  cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml" --bin arbiter
  binary="$root/target/release/arbiter"
fi
[ -x "$binary" ] || { echo "error: $binary is not an executable file" >&2; exit 64; }

rootfs="$out/rootfs"
rm -rf "$rootfs" "$out/oci" "$out/arbiter-oci.tar"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/var/lib/arbiter" "$rootfs/tmp"
install -m 0755 "$binary" "$rootfs/usr/local/bin/arbiter"

# Every library the dynamic loader resolves for the binary, at the same path, plus the
# loader itself. A statically linked binary has none ("not a dynamic executable").
libs=$(ldd "$binary" 2>/dev/null | awk '/=> \// { print $3 } /^\t\// { print $1 }' || true)
for lib in $libs; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
echo "==> $(echo "$libs" | grep -c . || true) shared libraries copied: $(echo $libs)"

# https probes without their own `ca` trust the system roots.
for bundle in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
  if [ -f "$bundle" ]; then
    mkdir -p "$rootfs/etc/ssl/certs"
    cp -L "$bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    break
  fi
done
printf 'root:x:0:0:root:/:/nonexistent\narbiter:x:65532:65532:arbiter:/var/lib/arbiter:/nonexistent\n' \
  >"$rootfs/etc/passwd"
printf 'root:x:0:\narbiter:x:65532:\n' >"$rootfs/etc/group"
# Peer names (StatefulSet pod names) are resolved by DNS through the container's resolv.conf.
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
chmod 1777 "$rootfs/tmp"

if [ "$(id -u)" = 0 ] && command -v chroot >/dev/null; then
  echo "==> inside the image root: $(chroot "$rootfs" /usr/local/bin/arbiter --version)"
else
  echo "==> not root: skipped running the binary inside the image root"
fi

# The OCI image layout. Deterministic layer: sorted names, numeric owner root (the data dir
# is owned by 65532), fixed mtime, so the same inputs give the same digests.
oci="$out/oci"
mkdir -p "$oci/blobs/sha256"
layer="$out/layer.tar"
# Everything owned by root but the state directory, which belongs to the image user; set in
# the archive, so no chown (and no root) is needed here.
tar --create --file "$layer" --directory "$rootfs" --sort=name --numeric-owner \
  --owner=0 --group=0 --mtime=@0 --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  --exclude=./var/lib/arbiter .
tar --append --file "$layer" --directory "$rootfs" --numeric-owner --owner=65532 \
  --group=65532 --mtime=@0 --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  --no-recursion ./var/lib/arbiter

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
layer_sha=$(sha "$layer")
layer_size=$(size "$layer")
mv "$layer" "$oci/blobs/sha256/$layer_sha"

config="$out/config.json"
printf '%s' "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"User\":\"65532:65532\",\"Entrypoint\":[\"/usr/local/bin/arbiter\"],\"Cmd\":[\"--help\"],\"Env\":[\"PATH=/usr/local/bin\"],\"ExposedPorts\":{\"7101/tcp\":{},\"5353/udp\":{},\"5353/tcp\":{},\"9100/tcp\":{}},\"Volumes\":{\"/var/lib/arbiter\":{}}},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$layer_sha\"]},\"history\":[{\"created_by\":\"deploy/container/build.sh\"}]}" >"$config"
config_sha=$(sha "$config")
config_size=$(size "$config")
mv "$config" "$oci/blobs/sha256/$config_sha"

manifest="$out/manifest.json"
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_sha\",\"size\":$config_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$layer_sha\",\"size\":$layer_size}]}" >"$manifest"
manifest_sha=$(sha "$manifest")
manifest_size=$(size "$manifest")
mv "$manifest" "$oci/blobs/sha256/$manifest_sha"

printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest_sha\",\"size\":$manifest_size,\"annotations\":{\"org.opencontainers.image.ref.name\":\"${tag#*:}\",\"io.containerd.image.name\":\"$tag\"}}]}" >"$oci/index.json"

tar --create --file "$out/arbiter-oci.tar" --directory "$oci" --sort=name --numeric-owner \
  --owner=0 --group=0 --mtime=@0 .
echo "==> $out/arbiter-oci.tar ($tag): layer $(( layer_size / 1024 / 1024 )) MiB, manifest sha256:$manifest_sha"
echo "    load it with:  podman load -i $out/arbiter-oci.tar   or   skopeo copy oci-archive:$out/arbiter-oci.tar ..."

//! Compiles proto/ with a vendored protoc, so no system protoc is needed. Also generates the
//! small etcd client the fence bench compares against (benches/etcd/rpc.proto); only the
//! bench includes it, so the library does not grow.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single-threaded; the variable only tells prost-build where protoc is.
    std::env::set_var("PROTOC", protoc);
    // Every service and client of ours decodes with `crate::codec` (a malformed request is
    // INVALID_ARGUMENT naming the field, not INTERNAL).
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .compile_protos(&["proto/arbiter.proto"], &["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["benches/etcd/rpc.proto"], &["benches/etcd"])?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=benches/etcd");
    Ok(())
}

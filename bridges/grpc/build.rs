//! Compiles `proto/courier/v1/*.proto` into tonic services and clients, plus a file descriptor set for
//! server reflection. protoc comes from `protoc-bin-vendored`, so a build needs no system package.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from("../../proto");
    let files = ["records.proto", "streams.proto", "admin.proto"]
        .map(|file| proto_root.join("courier/v1").join(file));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut prost_config = prost_build::Config::new();
    prost_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        // Record keys and values are `Bytes`: the embedded log and the wire share buffers, no copies.
        .bytes(".courier.v1")
        // Each message encoded into room reserved for all of it (see src/codec.rs).
        .codec_path("crate::codec::ReservingCodec")
        .file_descriptor_set_path(out_dir.join("courier_descriptor.bin"))
        .compile_with_config(prost_config, &files, std::slice::from_ref(&proto_root))?;

    println!("cargo:rerun-if-changed={}", proto_root.display());
    Ok(())
}

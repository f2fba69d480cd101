//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler), so the build
//! needs no system `protoc`. The encoded descriptor set is kept for gRPC server reflection.
//! The subset of etcd's API under `proto/etcd` is compiled the same way, client side only.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/savepoint/v1/common.proto",
    "proto/savepoint/v1/savepoint_service.proto",
    "proto/savepoint/v1/task_gateway.proto",
];

const ETCD_PROTOS: &[&str] = &[
    "proto/etcd/mvccpb/kv.proto",
    "proto/etcd/etcdserverpb/rpc.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS.iter().chain(ETCD_PROTOS) {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("savepoint_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // No generated `connect` constructors: TaskGateway has an RPC named Connect, and
        // clients build their Channel explicitly anyway.
        .build_transport(false)
        .bytes(".savepoint.v1.StateHandle.inline")
        .compile_fds(descriptors)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .compile_fds(protox::compile(ETCD_PROTOS, ["proto"])?)?;
    Ok(())
}

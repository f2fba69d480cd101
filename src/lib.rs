//! savepoint-coordinator: a gRPC control plane that coordinates checkpoints and savepoints
//! for stream-processing jobs (modelled on Apache Flink's CheckpointCoordinator).
//!
//! Layers, outermost first: [`service`] (gRPC, thin) -> [`coordinator`] (the core, no I/O
//! under a lock) -> [`store`] (pluggable persistence); [`ha`] elects a leader among
//! replicas. [`server::run`] wires them together.

pub mod client;
pub mod config_file;
pub mod coordinator;
pub mod ha;
pub mod http;
mod jitter;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;

/// Code generated from `proto/savepoint/v1`.
pub mod proto {
    tonic::include_proto!("savepoint.v1");

    /// Encoded descriptor set, served through gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/savepoint_descriptor.bin"));
}

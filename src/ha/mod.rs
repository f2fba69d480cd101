//! High availability: several replicas of the server, one leader elected through etcd.
//!
//! [`etcd`] is a small client for etcd's v3 API, [`election`] campaigns for leadership and
//! tells the server its [`Role`](election::Role); the server opens the coordinator only
//! while it leads, with every write fenced on the leadership
//! ([`crate::store::etcd::Fence`]).

pub mod election;
pub mod etcd;

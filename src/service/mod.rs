//! The gRPC layer: decodes and validates requests, calls the core, maps results and errors.
//!
//! Deliberately thin (see STYLE.md): every conversion lives in [`convert`], every status
//! code is picked in [`error`], and the handlers in [`savepoint_service`] and
//! [`task_gateway`] do nothing but decode, call one core method and encode.
//! [`stream_gateway`] is the other direction: the core's task gateway over the task
//! managers' streams. [`auth`] decides who may call which service; [`request_limits`]
//! bounds how many calls run at once and how long unary ones may take.

pub mod auth;
pub mod convert;
pub mod error;
pub mod gate;
pub mod message_limit;
pub mod request_limits;
pub mod savepoint_service;
pub mod stream_gateway;
pub mod task_gateway;

pub use savepoint_service::SavepointRpc;
pub use stream_gateway::StreamRegistry;
pub use task_gateway::{TaskGatewayLimits, TaskGatewayRpc};

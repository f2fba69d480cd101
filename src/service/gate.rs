//! A gate in front of the coordinator's services: requests reach the services of the
//! current term while it is open, and are answered UNAVAILABLE while it is closed (a
//! replica that does not lead, or a server that is starting or shutting down).
//!
//! With high availability a replica's coordinator exists only while it leads; the gate
//! lets tonic keep serving one fixed set of services while the term behind them changes.
//! A follower's answer names the leader (in the message and in the `x-leader-address`
//! metadata), so a client that reached the wrong replica knows where to go.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::watch;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::{Service, ServiceExt};

/// The metadata key that carries the leader's address on a follower's UNAVAILABLE.
pub const LEADER_ADDRESS_METADATA: &str = "x-leader-address";

/// Whether the gate lets requests through, and to what.
#[derive(Clone)]
pub enum GateState<T> {
    /// Requests go to these services.
    Open(T),
    /// Requests are refused; `leader` is where the current leader serves, if known.
    Closed {
        reason: String,
        leader: Option<String>,
    },
}

/// One service behind the gate; `pick` selects it from the term's services `T`.
pub struct Gate<T, S> {
    state: watch::Receiver<GateState<T>>,
    pick: fn(&T) -> S,
}

impl<T, S> Clone for Gate<T, S> {
    fn clone(&self) -> Self {
        Gate {
            state: self.state.clone(),
            pick: self.pick,
        }
    }
}

impl<T, S> Gate<T, S> {
    pub fn new(state: watch::Receiver<GateState<T>>, pick: fn(&T) -> S) -> Self {
        Gate { state, pick }
    }
}

impl<T, S: NamedService> NamedService for Gate<T, S> {
    const NAME: &'static str = S::NAME;
}

/// The status a closed gate answers with.
pub fn closed_status(reason: &str, leader: Option<&str>) -> tonic::Status {
    match leader {
        Some(leader) => {
            let mut status = tonic::Status::unavailable(format!(
                "{reason}; the leader serves at {leader}: send the request there"
            ));
            if let Ok(value) = leader.parse() {
                status.metadata_mut().insert(LEADER_ADDRESS_METADATA, value);
            }
            status
        }
        None => tonic::Status::unavailable(format!("{reason}; retry shortly")),
    }
}

impl<T, S, B> Service<http::Request<Body>> for Gate<T, S>
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is decided per call, by the term that is current then.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let target = match &*self.state.borrow() {
            GateState::Open(services) => Ok((self.pick)(services)),
            GateState::Closed { reason, leader } => Err(closed_status(reason, leader.as_deref())),
        };
        match target {
            Ok(service) => Box::pin(async move {
                let response = service.oneshot(request).await?;
                Ok(response.map(Body::new))
            }),
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_followers_answer_names_the_leader() {
        let status = closed_status("this replica is not the leader", Some("10.1.2.3:50051"));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().contains("10.1.2.3:50051"),
            "{}",
            status.message()
        );
        assert_eq!(
            status.metadata().get(LEADER_ADDRESS_METADATA).unwrap(),
            "10.1.2.3:50051"
        );
        let status = closed_status("no leader is elected yet", None);
        assert!(status.metadata().get(LEADER_ADDRESS_METADATA).is_none());
    }
}

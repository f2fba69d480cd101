//! A gate in front of the coordinator's services: requests reach the services of the
//! current term while it is open, and are answered UNAVAILABLE while it is closed (a
//! replica that does not lead, or a server that is starting or shutting down).
//!
//! With high availability a replica's coordinator exists only while it leads; the gate
//! lets tonic keep serving one fixed set of services while the term behind them changes.
//! A follower's answer names the leader (in the message and in the `x-leader-address`
//! metadata), so a client that reached the wrong replica knows where to go.

use crate::ha::election::LeaseDeadline;
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

/// Why a leader whose lease may have run out refuses calls.
const LEASE_LAPSED: &str =
    "this replica's leadership lease may have expired (it could not refresh it in time)";

/// One service behind the gate; `pick` selects it from the term's services `T`.
pub struct Gate<T, S> {
    state: watch::Receiver<GateState<T>>,
    pick: fn(&T) -> S,
    /// With high availability: an open gate admits calls only while the leader's lease
    /// surely lives, also in the moment before a lapsed lease closes the gate.
    lease: Option<LeaseDeadline>,
}

impl<T, S> Clone for Gate<T, S> {
    fn clone(&self) -> Self {
        Gate {
            state: self.state.clone(),
            pick: self.pick,
            lease: self.lease.clone(),
        }
    }
}

impl<T, S> Gate<T, S> {
    pub fn new(
        state: watch::Receiver<GateState<T>>,
        pick: fn(&T) -> S,
        lease: Option<LeaseDeadline>,
    ) -> Self {
        Gate { state, pick, lease }
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
            GateState::Open(_) if self.lease.as_ref().is_some_and(|l| !l.is_valid()) => {
                Err(closed_status(LEASE_LAPSED, None))
            }
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

    type Inner =
        tower::util::BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

    /// The grpc-status of what `gate` answers (None: the inner service answered).
    async fn answer(gate: &mut Gate<Inner, Inner>) -> Option<String> {
        let response = gate.call(http::Request::new(Body::empty())).await.unwrap();
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[tokio::test]
    async fn an_open_gate_refuses_calls_once_the_leadership_lease_may_have_expired() {
        let inner: Inner = tower::util::BoxCloneSyncService::new(tower::service_fn(
            |_request: http::Request<Body>| async { Ok(http::Response::new(Body::empty())) },
        ));
        let (_state, receiver) = watch::channel(GateState::Open(inner));
        let lease = LeaseDeadline::default();
        let mut gate = Gate::new(receiver, |inner: &Inner| inner.clone(), Some(lease.clone()));
        assert_eq!(
            answer(&mut gate).await,
            Some("14".into()),
            "never leading yet"
        );
        lease.extend_to(
            tokio::time::Instant::now() + std::time::Duration::from_secs(60),
            1,
        );
        assert_eq!(answer(&mut gate).await, None, "the lease lives: admitted");
        lease.expire();
        assert_eq!(answer(&mut gate).await, Some("14".into()), "UNAVAILABLE");
    }
}

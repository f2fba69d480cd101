//! Server-wide bounds on the calls of one service, across all connections: how many may
//! run at once, and how long a unary call may keep its caller waiting.
//!
//! The per-connection limit in the server builder is no bound for the server: a caller
//! that opens more connections gets more slots. Here one semaphore is shared by every
//! connection. A call beyond it is answered RESOURCE_EXHAUSTED at once, never queued, so
//! memory stays bounded under a flood.
//!
//! A timed call runs as its own task: when the timeout passes its caller gets
//! DEADLINE_EXCEEDED, but the operation itself runs to its end (and keeps its slot until
//! then), so a store write is never abandoned halfway (a job registered in memory but
//! not on disk). Which calls are counted and which are timed is decided per method by a
//! [`CallPolicy`]: calls that wait for a snapshot honour the client's deadline instead,
//! and streams are never cut.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::codegen::http::{Request, Response};
use tonic::server::NamedService;
use tower::Service;

/// How one method is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallBound {
    /// Not bounded here (long-lived streams).
    Exempt,
    /// Counted against the concurrency limit; no server timeout (it honours the
    /// client's deadline itself).
    Counted,
    /// Counted, and answered DEADLINE_EXCEEDED after the request timeout.
    CountedAndTimed,
}

/// Picks the bound of a method by its name (the last segment of the gRPC path).
pub type CallPolicy = fn(&str) -> CallBound;

/// SavepointService: every call is counted; the three that wait for a durable snapshot
/// are not timed, since they answer before the client's own deadline.
pub fn savepoint_service_policy(method: &str) -> CallBound {
    match method {
        "TriggerSavepoint" | "StopWithSavepoint" | "TriggerCheckpoint" => CallBound::Counted,
        _ => CallBound::CountedAndTimed,
    }
}

/// TaskGateway: the unary Acknowledge and Decline are counted and timed; a task
/// manager's Connect stream is never refused or cut by these bounds.
pub fn task_gateway_policy(method: &str) -> CallBound {
    match method {
        "Connect" => CallBound::Exempt,
        _ => CallBound::CountedAndTimed,
    }
}

/// The bounds of one service.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// The setting (and flag) that sets `max_in_flight`, named in refusals.
    pub setting: &'static str,
    /// Calls that may run at once across all connections; at least 1.
    pub max_in_flight: usize,
    /// How long a timed call may keep its caller waiting.
    pub timeout: Duration,
    /// Which methods are counted and timed.
    pub policy: CallPolicy,
}

/// Wraps a service with [`RequestLimits`]; clones share one semaphore.
#[derive(Clone)]
pub struct Bounded<S> {
    inner: S,
    limits: Arc<RequestLimits>,
    permits: Arc<Semaphore>,
}

impl<S> Bounded<S> {
    /// Bounds `inner`. `limits.max_in_flight` must be between 1 and
    /// [`Semaphore::MAX_PERMITS`] (the server configuration checks it).
    pub fn new(inner: S, limits: RequestLimits) -> Self {
        let permits = limits.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Bounded {
            inner,
            limits: Arc::new(limits),
            permits: Arc::new(Semaphore::new(permits)),
        }
    }
}

impl<S: NamedService> NamedService for Bounded<S> {
    const NAME: &'static str = S::NAME;
}

/// The method name of a gRPC request path (`/package.Service/Method`).
fn method_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Bounded<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = Infallible>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let method = method_of(request.uri().path()).to_string();
        let bound = (self.limits.policy)(&method);
        if bound == CallBound::Exempt {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let status = busy(&self.limits, &method);
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let call = self.inner.call(request);
        if bound == CallBound::Counted {
            return Box::pin(async move {
                let response = call.await;
                drop(permit);
                response
            });
        }
        let timeout = self.limits.timeout;
        Box::pin(run_timed(call, permit, timeout, method))
    }
}

/// Runs `call` as its own task holding `permit` until it ends; answers its caller with
/// DEADLINE_EXCEEDED if it takes longer than `timeout`.
async fn run_timed<F, B>(
    call: F,
    permit: OwnedSemaphorePermit,
    timeout: Duration,
    method: String,
) -> Result<Response<B>, Infallible>
where
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Default + Send + 'static,
{
    let running = tokio::spawn(async move {
        let response = call.await;
        drop(permit);
        response
    });
    match tokio::time::timeout(timeout, running).await {
        Ok(Ok(response)) => response,
        Ok(Err(panicked)) => {
            tracing::error!(method, "request handler failed: {panicked}");
            Ok(Status::internal(format!("{method} failed inside the server")).into_http())
        }
        Err(_) => {
            tracing::warn!(
                method,
                ?timeout,
                "request timeout reached; the call goes on"
            );
            Ok(Status::deadline_exceeded(format!(
                "{method} did not finish within the server's request timeout of {} ms \
                 (request_timeout, --request-timeout-ms); it goes on in the background and \
                 may still take effect, so check its outcome before retrying",
                timeout.as_millis()
            ))
            .into_http())
        }
    }
}

/// The refusal of a call beyond the concurrency limit.
fn busy(limits: &RequestLimits, method: &str) -> Status {
    tracing::debug!(
        method,
        limit = limits.max_in_flight,
        "call refused: server busy"
    );
    Status::resource_exhausted(format!(
        "server busy: {} calls of this service are already in progress, the server-wide \
         limit ({} = {}); {method} was not started, retry with backoff",
        limits.max_in_flight, limits.setting, limits.max_in_flight
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;
    use tonic::Code;
    use tower::ServiceExt;

    /// A service whose calls end when the test says so (or at once for path `/S/Quick`).
    #[derive(Clone)]
    struct Held {
        release: Arc<std::sync::Mutex<Vec<oneshot::Sender<()>>>>,
    }

    impl Service<Request<()>> for Held {
        type Response = Response<String>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<()>) -> Self::Future {
            let quick = request.uri().path().ends_with("/Quick");
            let (release, released) = oneshot::channel();
            self.release.lock().unwrap().push(release);
            Box::pin(async move {
                if !quick {
                    let _ = released.await;
                }
                Ok(Response::new("done".to_string()))
            })
        }
    }

    fn bounded(max_in_flight: usize, policy: CallPolicy) -> (Bounded<Held>, Held) {
        let held = Held {
            release: Arc::default(),
        };
        let limits = RequestLimits {
            setting: "max_requests",
            max_in_flight,
            timeout: Duration::from_secs(5),
            policy,
        };
        (Bounded::new(held.clone(), limits), held)
    }

    fn request(method: &str) -> Request<()> {
        Request::builder()
            .uri(format!("http://localhost/savepoint.v1.S/{method}"))
            .body(())
            .unwrap()
    }

    fn status_of(response: &Response<String>) -> Option<Status> {
        Status::from_header_map(response.headers())
    }

    #[tokio::test]
    async fn calls_beyond_the_limit_are_refused_at_once_and_slots_free_when_calls_end() {
        let (service, held) = bounded(2, savepoint_service_policy);
        let first = tokio::spawn(service.clone().oneshot(request("TriggerSavepoint")));
        let second = tokio::spawn(service.clone().oneshot(request("ListSavepoints")));
        while held.release.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        let refused = service.clone().oneshot(request("Quick")).await.unwrap();
        let status = status_of(&refused).expect("a status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("max_requests = 2"),
            "{}",
            status.message()
        );
        assert_eq!(
            held.release.lock().unwrap().len(),
            2,
            "never reached the service"
        );

        for release in held.release.lock().unwrap().drain(..) {
            let _ = release.send(());
        }
        for call in [first, second] {
            let response = call.await.unwrap().unwrap();
            assert_eq!(status_of(&response).map(|s| s.code()), None);
        }
        let again = service.oneshot(request("Quick")).await.unwrap();
        assert_eq!(again.body(), "done");
    }

    #[tokio::test]
    async fn exempt_calls_pass_a_full_limit() {
        let (service, held) = bounded(1, task_gateway_policy);
        let _ack = tokio::spawn(service.clone().oneshot(request("Acknowledge")));
        while held.release.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let connect = tokio::spawn(service.clone().oneshot(request("Connect")));
        while held.release.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        let _ = held.release.lock().unwrap().remove(1).send(());
        let response = connect.await.unwrap().unwrap();
        assert_eq!(response.body(), "done");
        let refused = service.oneshot(request("Decline")).await.unwrap();
        assert_eq!(
            status_of(&refused).map(|s| s.code()),
            Some(Code::ResourceExhausted)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timed_calls_answer_deadline_exceeded_but_keep_their_slot_until_they_end() {
        let (service, held) = bounded(1, savepoint_service_policy);
        let response = service
            .clone()
            .oneshot(request("RegisterJob"))
            .await
            .unwrap();
        let status = status_of(&response).expect("a status");
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(
            status.message().contains("request timeout of 5000 ms"),
            "{}",
            status.message()
        );
        // The call goes on and still holds the only slot.
        let refused = service.clone().oneshot(request("Quick")).await.unwrap();
        assert_eq!(
            status_of(&refused).map(|s| s.code()),
            Some(Code::ResourceExhausted)
        );
        let _ = held.release.lock().unwrap().remove(0).send(());
        let mut answered = None;
        for _ in 0..100 {
            let response = service.clone().oneshot(request("Quick")).await.unwrap();
            if status_of(&response).is_none() {
                answered = Some(response);
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(answered.expect("the slot is freed").body(), "done");
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_triggers_are_not_timed() {
        let (service, held) = bounded(1, savepoint_service_policy);
        let trigger = tokio::spawn(service.oneshot(request("TriggerSavepoint")));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !trigger.is_finished(),
            "a trigger waits past the request timeout"
        );
        let _ = held.release.lock().unwrap().remove(0).send(());
        let response = trigger.await.unwrap().unwrap();
        assert_eq!(response.body(), "done");
    }
}

//! tonic answers a request above the message size limit with OUT_OF_RANGE; gRPC's
//! convention, and this API's, is RESOURCE_EXHAUSTED for a size limit. This layer
//! rewrites that one answer; everything else passes untouched.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::codegen::http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

/// `grpc-status` of OUT_OF_RANGE and of RESOURCE_EXHAUSTED.
const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

/// See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageLimitStatusLayer;

impl<S> Layer<S> for MessageLimitStatusLayer {
    type Service = MessageLimitStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimitStatus { inner }
    }
}

#[derive(Clone, Debug)]
pub struct MessageLimitStatus<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MessageLimitStatus<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            if is_size_limit_answer(&response) {
                response
                    .headers_mut()
                    .insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
            }
            Ok(response)
        })
    }
}

/// A trailers-only answer of tonic's message size check.
fn is_size_limit_answer<B>(response: &Response<B>) -> bool {
    let headers = response.headers();
    let status = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    let message = headers.get("grpc-message").and_then(|v| v.to_str().ok());
    status == Some(OUT_OF_RANGE)
        && message.is_some_and(|m| {
            m.contains("message%20length%20too%20large") || m.contains("message length too large")
        })
}

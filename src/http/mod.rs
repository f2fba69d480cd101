//! The HTTP port: Prometheus metrics (`/metrics`) and a small status page (`/` lists the
//! jobs, `/jobs/<job_id>` shows one), on a listener of its own, off by default.
//!
//! Plain HTTP/1.1 on hyper, GET and HEAD only. It reads the server's
//! [`ServerStatus`](crate::metrics::ServerStatus), so it always shows the current term:
//! in high availability the leader's coordinator, or on a follower who leads. It stops
//! with the gRPC server: no new connections, open ones finish their request and close,
//! bounded by the shutdown grace period.

mod pages;

use crate::metrics::{self, ServerMetrics};
use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Connections served at once; more are closed at once (it is a monitoring port).
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors) before the next one.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A bound listener for the HTTP port, made by the caller (like the gRPC listener), so a
/// test can bind `127.0.0.1:0` and read the port back before the server starts. Clones
/// share the socket; it stays bound while any clone lives.
#[derive(Clone, Debug)]
pub struct HttpListener(Arc<std::net::TcpListener>);

impl HttpListener {
    /// Binds `address`.
    pub fn bind(address: SocketAddr) -> std::io::Result<HttpListener> {
        let listener = std::net::TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        Ok(HttpListener(Arc::new(listener)))
    }

    /// The bound address (with the port the system picked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn to_tokio(&self) -> std::io::Result<TcpListener> {
        TcpListener::from_std(self.0.try_clone()?)
    }
}

/// The running HTTP server; [`stop`](Self::stop) ends it.
pub struct HttpServer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Serves `metrics` (and the status it reads) on `listener`. Needs a tokio runtime.
    pub fn start(
        listener: &HttpListener,
        metrics: Arc<ServerMetrics>,
    ) -> std::io::Result<HttpServer> {
        let listener = listener.to_tokio()?;
        let address = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        tracing::info!(%address, "serving metrics and the status page over HTTP");
        let task = tokio::spawn(accept(listener, metrics, stopped));
        Ok(HttpServer { stop, task })
    }

    /// Stops accepting, lets open connections finish their request within `grace`, then
    /// drops whatever is left.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(
                ?grace,
                "HTTP connections still open after the shutdown grace period; closed"
            );
        }
    }
}

async fn accept(
    listener: TcpListener,
    metrics: Arc<ServerMetrics>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!("accepting an HTTP connection failed: {error}");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = MAX_CONNECTIONS, "too many HTTP connections; closing a new one");
            continue;
        };
        let metrics = metrics.clone();
        let stopped = stopped.clone();
        connections.spawn(async move {
            serve_connection(stream, metrics, stopped).await;
            drop(slot);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    metrics: Arc<ServerMetrics>,
    mut stopped: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| {
        let metrics = metrics.clone();
        async move { Ok::<_, Infallible>(respond(&request, &metrics)) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let finished = tokio::select! {
        served = connection.as_mut() => Some(served),
        _ = stopped.wait_for(|stop| *stop) => None,
    };
    let served = match finished {
        Some(served) => served,
        None => {
            // Finishes the request in progress, if any, then closes.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        tracing::debug!("HTTP connection ended with an error: {error}");
    }
}

/// Routes one request. Only GET and HEAD are served; HEAD gets GET's headers.
fn respond(request: &Request<Incoming>, metrics: &ServerMetrics) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served here\n",
        );
        response
            .headers_mut()
            .insert(ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let path = request.uri().path();
    let mut response = match path {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        "/" => html(pages::index(metrics.status())),
        _ => match path.strip_prefix("/jobs/") {
            Some(job_id) if !job_id.is_empty() && !job_id.contains('/') => {
                html(pages::job(metrics.status(), job_id))
            }
            _ => html(pages::not_found(path)),
        },
    };
    // For HEAD, hyper sends the headers (length included) and leaves the body out.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    response
}

fn html(page: pages::Page) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(page.html)));
    *response.status_mut() = page.status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

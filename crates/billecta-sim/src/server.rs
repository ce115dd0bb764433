//! The HTTP/1.1 server under the router: an own accept loop instead of a ready-made `serve`,
//! because two faults need control of the TCP connection itself. A reset must abort the connection
//! with no response at all (`SO_LINGER` 0, then close, so the peer gets an RST), and a hanging
//! request must hold its connection open until the client gives up or the simulator shuts down.
//!
//! Each connection gets a [`ConnectionHandle`] in its requests' extensions. A handler that calls
//! [`ConnectionHandle::reset`] makes the connection's task drop the connection, and the stream's
//! `Drop` sets zero linger first.

use axum::Router;
use http::Request;
use http::uri::{PathAndQuery, Uri};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long open connections get to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Lets a handler abort the connection its request came on.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionHandle {
    kill: CancellationToken,
}

impl ConnectionHandle {
    /// Aborts the connection: no response, the client sees a connection reset.
    pub(crate) fn reset(&self) {
        self.kill.cancel();
    }
}

/// A TCP stream that is closed abortively (RST) when dropped after a reset.
struct ResettableStream {
    stream: TcpStream,
    reset: CancellationToken,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if !self.reset.is_cancelled() {
            return;
        }
        if let Err(error) = self.stream.set_zero_linger() {
            tracing::debug!(error = %error, "setting zero linger failed; the connection closes normally");
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts connections until `shutdown` is cancelled, then lets open connections finish (idle ones
/// close at once, hanging requests end because they watch the same token) for a grace period.
pub(crate) async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(error = %error, "setting TCP_NODELAY failed");
                    }
                    connections.spawn(serve_connection(stream, router.clone(), shutdown.clone()));
                }
                Err(error) => {
                    tracing::warn!(error = %error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!("connections still open after the grace period were cut off");
        connections.abort_all();
    }
}

async fn serve_connection(stream: TcpStream, router: Router, shutdown: CancellationToken) {
    let kill = CancellationToken::new();
    let handle = ConnectionHandle { kill: kill.clone() };
    let io = TokioIo::new(ResettableStream {
        stream,
        reset: kill.clone(),
    });
    let service = router.map_request(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(handle.clone());
        lowercase_path(&mut request);
        request
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(io, TowerToHyperService::new(service));
    let mut pinned = std::pin::pin!(connection);
    tokio::select! {
        result = pinned.as_mut() => log_end(result),
        () = kill.cancelled() => {}
        () = shutdown.cancelled() => {
            pinned.as_mut().graceful_shutdown();
            tokio::select! {
                result = pinned.as_mut() => log_end(result),
                () = kill.cancelled() => {}
            }
        }
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        tracing::debug!(error = %error, "connection ended with an error");
    }
}

/// ASP.NET routes ignore case (`/v1/Creditors/Creditor` works), so paths under `/v1/` are matched
/// in lower case. The query string is left alone.
fn lowercase_path<B>(request: &mut Request<B>) {
    let path = request.uri().path();
    if !path.bytes().any(|b| b.is_ascii_uppercase())
        || !path.to_ascii_lowercase().starts_with("/v1/")
    {
        return;
    }
    let lowered = match request.uri().query() {
        Some(query) => format!("{}?{query}", path.to_ascii_lowercase()),
        None => path.to_ascii_lowercase(),
    };
    let Ok(path_and_query) = PathAndQuery::try_from(lowered) else {
        return;
    };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_are_lowercased_but_not_queries_or_admin_paths() {
        let mut request = Request::builder()
            .uri("/v1/Creditors/Creditors?SortingField=Name")
            .body(())
            .unwrap();
        lowercase_path(&mut request);
        assert_eq!(
            request.uri().to_string(),
            "/v1/creditors/creditors?SortingField=Name"
        );
        let mut admin = Request::builder().uri("/admin/State").body(()).unwrap();
        lowercase_path(&mut admin);
        assert_eq!(admin.uri().path(), "/admin/State");
    }
}

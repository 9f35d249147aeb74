//! The admin-API client the CLI uses: one HTTP/1.1 request over the unix socket (hyper), JSON in and out.
//! Distinguishes "no daemon there" (the CLI exits 69) from an answer (whatever its status).

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (missing file, refused, permission denied).
    #[error("no wirebot daemon answers on {}: {source}", socket.display())]
    Unavailable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something answered but the HTTP exchange failed.
    #[error("the admin API on {} failed mid-request", socket.display())]
    Protocol {
        socket: PathBuf,
        #[source]
        source: hyper::Error,
    },
    #[error("cannot build the request")]
    Request(#[source] hyper::http::Error),
}

/// An answer from the admin API.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: StatusCode,
    /// The parsed JSON body (`Value::Null` when empty or not JSON).
    pub body: Value,
}

impl ApiResponse {
    /// For a problem+json answer, its `detail` (else the status text).
    pub fn problem_detail(&self) -> String {
        self.body
            .get("detail")
            .and_then(Value::as_str)
            .map_or_else(|| self.status.to_string(), ToOwned::to_owned)
    }
}

/// Sends one request to the admin API on `socket` and reads the whole answer.
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&Value>,
    actor: &str,
) -> Result<ApiResponse, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Unavailable {
            socket: socket.to_owned(),
            source,
        })?;
    let protocol = |source| ClientError::Protocol {
        socket: socket.to_owned(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(protocol)?;
    // The connection future must run while the request is in flight; it ends when `sender` is dropped.
    let driver = tokio::spawn(connection);

    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "wirebot")
        .header(crate::admin::ACTOR_HEADER, actor);
    let bytes = match body {
        Some(value) => {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
            Bytes::from(value.to_string())
        }
        None => Bytes::new(),
    };
    let req = builder
        .body(Full::new(bytes))
        .map_err(ClientError::Request)?;
    let response = sender.send_request(req).await.map_err(protocol)?;
    let status = response.status();
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(protocol)?
        .to_bytes();
    drop(sender);
    let _ = driver.await;
    let body = serde_json::from_slice(&collected).unwrap_or(Value::Null);
    Ok(ApiResponse { status, body })
}

//! Body types of the proxy: `ReqBody` (client body with a size limit, streamed to the worker) and `ProxyBody`
//! (the worker's body streamed back, or a small generated body). Nothing is ever buffered.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::member::InFlight;
use super::pool::Returner;

/// Boxed error type of the proxy bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body, forwarded frame by frame; fails once more than `limit` bytes went through.
#[derive(Debug)]
pub(crate) struct ReqBody {
    inner: Incoming,
    remaining: u64,
}

/// The request body exceeded `max_body_bytes` while streaming (a chunked upload without Content-Length).
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit")]
pub(crate) struct BodyTooLarge;

impl ReqBody {
    pub(crate) fn new(inner: Incoming, limit: u64) -> ReqBody {
        ReqBody {
            inner,
            remaining: limit,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    self.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body: the worker's, streamed through, or one the proxy made (errors, redirects).
#[derive(Debug)]
pub(crate) enum ProxyBody {
    /// The worker's body. When it ends, its connection goes back to the pool; until then the member's request
    /// stays counted in flight (so a long SSE stream keeps the worker awake).
    Upstream {
        inner: Incoming,
        returner: Option<Returner>,
        done: bool,
        _in_flight: Option<InFlight>,
    },
    /// A small body made by the proxy.
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub(crate) fn upstream(
        inner: Incoming,
        returner: Option<Returner>,
        in_flight: Option<InFlight>,
    ) -> ProxyBody {
        ProxyBody::Upstream {
            inner,
            returner,
            done: false,
            _in_flight: in_flight,
        }
    }

    pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub(crate) fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream {
                inner,
                returner,
                done,
                ..
            } => {
                // Drive the worker connection first: it moves response bytes into `inner`.
                if let Some(r) = returner.as_mut() {
                    r.poll_driver(cx);
                }
                let out = ready!(Pin::new(&mut *inner).poll_frame(cx));
                match out {
                    Some(Ok(frame)) => {
                        if inner.is_end_stream() {
                            *done = true;
                            if let Some(r) = returner.take() {
                                r.give_back();
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(e)) => {
                        // The worker's connection broke mid-body: it is not reusable.
                        returner.take();
                        Poll::Ready(Some(Err(Box::new(e))))
                    }
                    None => {
                        *done = true;
                        if let Some(r) = returner.take() {
                            r.give_back();
                        }
                        Poll::Ready(None)
                    }
                }
            }
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, done, .. } => *done || inner.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // The server may stop polling once the body reports its end (Content-Length reached): give the
        // connection back then. A body dropped half-read leaves its connection unusable: it is closed instead.
        if let ProxyBody::Upstream {
            inner,
            returner,
            done,
            ..
        } = self
            && (*done || inner.is_end_stream())
            && let Some(r) = returner.take()
        {
            r.give_back();
        }
    }
}

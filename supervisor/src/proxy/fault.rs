//! `Fault`: every way a proxied request can fail, with whose fault it is and the one status/body mapping.
//! Clients asking for JSON get `application/problem+json`; others a one-line text. Causes are logged, never sent.

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Response, StatusCode};

use super::body::ProxyBody;

/// Who caused a failure (pingora's `ErrorSource`): decides 4xx vs 5xx and whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    /// The client: no route, bad token, over a limit.
    Downstream,
    /// The member's worker: refused, broke, timed out, not started.
    Upstream,
}

/// A request the proxy answered itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The request head is not valid HTTP/1.1.
    MalformedRequest,
    /// The request head is larger than `max_header_bytes`.
    HeadTooLarge,
    /// No host, path or token binding matches.
    NoRoute,
    /// The route needs a token and none was presented.
    MissingToken,
    /// A token was presented for a host/path route but is not that member's.
    WrongToken,
    /// A token was presented on its own but opens no route.
    UnknownToken,
    /// The member's token bucket is empty.
    RateLimited,
    /// The member has too many requests/WebSockets open.
    TooManyConnections,
    /// The request body is larger than `max_body_bytes`.
    BodyTooLarge,
    /// The worker is starting (or failed to become Ready within the start timeout).
    Starting { reason: String },
    /// The worker is quarantined after repeated crashes.
    Quarantined { reason: String },
    /// Connecting to the worker failed (refused, reset).
    UpstreamRefused,
    /// The worker accepted, then broke the exchange (closed mid-response, invalid HTTP).
    UpstreamBroken,
    /// The worker did not connect or answer within the timeout.
    UpstreamTimeout,
}

impl Fault {
    pub fn status(&self) -> StatusCode {
        match self {
            Fault::MalformedRequest => StatusCode::BAD_REQUEST,
            Fault::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Fault::NoRoute => StatusCode::NOT_FOUND,
            Fault::MissingToken | Fault::UnknownToken => StatusCode::UNAUTHORIZED,
            Fault::WrongToken => StatusCode::FORBIDDEN,
            Fault::RateLimited | Fault::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            Fault::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Fault::Starting { .. } | Fault::Quarantined { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Fault::UpstreamRefused | Fault::UpstreamBroken => StatusCode::BAD_GATEWAY,
            Fault::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn culprit(&self) -> Culprit {
        match self {
            Fault::MalformedRequest
            | Fault::HeadTooLarge
            | Fault::NoRoute
            | Fault::MissingToken
            | Fault::WrongToken
            | Fault::UnknownToken
            | Fault::RateLimited
            | Fault::TooManyConnections
            | Fault::BodyTooLarge => Culprit::Downstream,
            Fault::Starting { .. }
            | Fault::Quarantined { .. }
            | Fault::UpstreamRefused
            | Fault::UpstreamBroken
            | Fault::UpstreamTimeout => Culprit::Upstream,
        }
    }

    /// Stable slug used in the problem `type` URI.
    fn slug(&self) -> &'static str {
        match self {
            Fault::MalformedRequest => "malformed-request",
            Fault::HeadTooLarge => "head-too-large",
            Fault::NoRoute => "no-route",
            Fault::MissingToken => "missing-token",
            Fault::WrongToken => "wrong-token",
            Fault::UnknownToken => "unknown-token",
            Fault::RateLimited => "rate-limited",
            Fault::TooManyConnections => "too-many-connections",
            Fault::BodyTooLarge => "body-too-large",
            Fault::Starting { .. } => "worker-starting",
            Fault::Quarantined { .. } => "worker-quarantined",
            Fault::UpstreamRefused => "worker-refused",
            Fault::UpstreamBroken => "worker-broken",
            Fault::UpstreamTimeout => "worker-timeout",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Fault::MalformedRequest => "Malformed request",
            Fault::HeadTooLarge => "Request head too large",
            Fault::NoRoute => "No such route",
            Fault::MissingToken => "Token required",
            Fault::WrongToken => "Token not accepted",
            Fault::UnknownToken => "Unknown token",
            Fault::RateLimited => "Too many requests",
            Fault::TooManyConnections => "Too many open connections",
            Fault::BodyTooLarge => "Request body too large",
            Fault::Starting { .. } => "Worker is starting",
            Fault::Quarantined { .. } => "Worker is unavailable",
            Fault::UpstreamRefused => "Worker refused the connection",
            Fault::UpstreamBroken => "Worker broke the response",
            Fault::UpstreamTimeout => "Worker timed out",
        }
    }

    fn detail(&self) -> String {
        match self {
            Fault::MalformedRequest => "the request head is not valid HTTP/1.1".to_owned(),
            Fault::HeadTooLarge => {
                "the request line and headers are over the proxy's limit".to_owned()
            }
            Fault::NoRoute => "no member is bound to this host, path or token".to_owned(),
            Fault::MissingToken => {
                "send the member token as `Authorization: Bearer <token>` or `?token=<token>`"
                    .to_owned()
            }
            Fault::WrongToken => "the token does not open this route".to_owned(),
            Fault::UnknownToken => "the token opens no route".to_owned(),
            Fault::RateLimited => "request rate over the member limit; retry shortly".to_owned(),
            Fault::TooManyConnections => {
                "too many concurrent requests or WebSockets for this member".to_owned()
            }
            Fault::BodyTooLarge => "the request body is over the proxy's limit".to_owned(),
            Fault::Starting { reason } | Fault::Quarantined { reason } => reason.clone(),
            Fault::UpstreamRefused => "the member's worker is not accepting connections".to_owned(),
            Fault::UpstreamBroken => "the member's worker closed the exchange early".to_owned(),
            Fault::UpstreamTimeout => "the member's worker did not answer in time".to_owned(),
        }
    }

    fn retry_after_s(&self) -> Option<u32> {
        match self {
            Fault::RateLimited | Fault::TooManyConnections => Some(1),
            Fault::Starting { .. } => Some(5),
            Fault::Quarantined { .. } => Some(60),
            _ => None,
        }
    }

    /// The response for this fault; `wants_json` picks problem+json over text.
    pub(crate) fn response(&self, wants_json: bool) -> Response<ProxyBody> {
        let status = self.status();
        let (content_type, body) = if wants_json {
            let doc = serde_json::json!({
                "type": format!("urn:wirebot:proxy:{}", self.slug()),
                "title": self.title(),
                "status": status.as_u16(),
                "detail": self.detail(),
            });
            ("application/problem+json", doc.to_string())
        } else {
            (
                "text/plain; charset=utf-8",
                format!("{}: {}\n", self.title(), self.detail()),
            )
        };
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(s) = self.retry_after_s() {
            h.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        if matches!(self, Fault::MissingToken | Fault::UnknownToken) {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wirebot\""),
            );
        }
        resp
    }
}

/// True when the client prefers JSON (API clients): `Accept` mentions json, or the request carries a body type of json.
pub(crate) fn wants_json(headers: &HeaderMap) -> bool {
    let mentions_json = |v: &HeaderValue| v.to_str().is_ok_and(|s| s.contains("json"));
    headers.get(http::header::ACCEPT).is_some_and(mentions_json)
        || headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(mentions_json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(resp: Response<ProxyBody>) -> String {
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn problem_json_names_the_fault() {
        let resp = Fault::Quarantined {
            reason: "worker crashed 5 times".into(),
        }
        .response(true);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[RETRY_AFTER], "60");
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(
            body(resp).await,
            r#"{"type":"urn:wirebot:proxy:worker-quarantined","title":"Worker is unavailable","status":503,"detail":"worker crashed 5 times"}"#
        );
    }

    #[test]
    fn whose_fault_decides_the_status_class() {
        for f in [
            Fault::NoRoute,
            Fault::MissingToken,
            Fault::WrongToken,
            Fault::RateLimited,
            Fault::BodyTooLarge,
        ] {
            assert_eq!(f.culprit(), Culprit::Downstream);
            assert!(f.status().is_client_error());
        }
        for f in [
            Fault::UpstreamRefused,
            Fault::UpstreamBroken,
            Fault::UpstreamTimeout,
            Fault::Starting {
                reason: String::new(),
            },
        ] {
            assert_eq!(f.culprit(), Culprit::Upstream);
            assert!(f.status().is_server_error());
        }
    }
}

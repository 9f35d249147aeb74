//! A minimal Server-Sent Events reader over a reqwest byte stream, with a per-chunk idle timeout.

use std::time::Duration;

use futures_util::StreamExt;

/// One SSE event: its `event:` name (empty if none) and joined `data:` lines.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct SseEvent {
    pub(crate) event: String,
    pub(crate) data: String,
}

/// Why reading stopped early.
#[derive(Debug)]
pub(crate) enum SseError {
    Idle,
    Transport(String),
}

pub(crate) struct SseReader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    idle: Duration,
}

impl SseReader {
    pub(crate) fn new(resp: reqwest::Response, idle: Duration) -> Self {
        SseReader {
            body: resp.bytes_stream().boxed(),
            buf: Vec::new(),
            idle,
        }
    }

    /// The next event, `Ok(None)` at the end of the stream.
    pub(crate) async fn next(&mut self) -> Result<Option<SseEvent>, SseError> {
        loop {
            if let Some(ev) = take_event(&mut self.buf) {
                if ev.data.is_empty() && ev.event.is_empty() {
                    continue;
                }
                // A read can hold thousands of events that need no further I/O: give the rest of the runtime
                // (the socket writers relaying them) its turn now and then.
                tokio::task::consume_budget().await;
                return Ok(Some(ev));
            }
            match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => return Err(SseError::Idle),
                Ok(None) => {
                    // A final event without the blank line still counts.
                    if self.buf.iter().any(|b| !b.is_ascii_whitespace()) {
                        self.buf.extend_from_slice(b"\n\n");
                        continue;
                    }
                    return Ok(None);
                }
                Ok(Some(Err(e))) => return Err(SseError::Transport(e.to_string())),
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
            }
        }
    }
}

fn take_event(buf: &mut Vec<u8>) -> Option<SseEvent> {
    let text_end = find_blank_line(buf)?;
    let (end, skip) = text_end;
    let raw: Vec<u8> = buf.drain(..end + skip).collect();
    let text = String::from_utf8_lossy(&raw[..end]);
    let mut ev = SseEvent::default();
    let mut data = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
        } else if let Some(v) = line.strip_prefix("event:") {
            ev.event = v.trim().to_string();
        }
    }
    ev.data = data.join("\n");
    Some(ev)
}

/// The first blank line (`\n\n` or `\r\n\r\n`): its start and length. Stops at the first one, so taking every
/// event of a buffer that holds thousands is linear, not quadratic.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let at = i + p;
        if buf.get(at + 1) == Some(&b'\n') {
            return Some((at, 2));
        }
        if at >= 1 && buf[at - 1] == b'\r' && buf.get(at + 1..at + 3) == Some(b"\r\n") {
            return Some((at - 1, 4));
        }
        i = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events() {
        let mut buf = b"event: a\ndata: {\"x\":1}\n\ndata: [DONE]\r\n\r\npartial".to_vec();
        assert_eq!(
            take_event(&mut buf),
            Some(SseEvent {
                event: "a".into(),
                data: "{\"x\":1}".into()
            })
        );
        assert_eq!(
            take_event(&mut buf),
            Some(SseEvent {
                event: "".into(),
                data: "[DONE]".into()
            })
        );
        assert_eq!(take_event(&mut buf), None);
        assert_eq!(buf, b"partial");
        let mut buf = b"data: a\r\n\r\ndata: b\n\n".to_vec();
        assert_eq!(take_event(&mut buf).unwrap().data, "a");
        assert_eq!(take_event(&mut buf).unwrap().data, "b");
        assert_eq!(find_blank_line(b"x\ny\r\nz\n"), None);
    }
}

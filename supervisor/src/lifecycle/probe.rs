//! Readiness and health probes: the ready line in the log, `GET /healthz`, and a plain TCP connect.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::logs::Follow;

/// Parses `wirebot-worker ready port=<p> pid=<pid>`.
pub(super) fn parse_ready_line(line: &str) -> Option<(u16, i32)> {
    let rest = line.trim().strip_prefix("wirebot-worker ready ")?;
    let mut port = None;
    let mut pid = None;
    for field in rest.split_whitespace() {
        if let Some(p) = field.strip_prefix("port=") {
            port = p.parse().ok();
        } else if let Some(p) = field.strip_prefix("pid=") {
            pid = p.parse().ok();
        }
    }
    Some((port?, pid?))
}

/// Polls the log for the ready line of `pid` (1 ms, doubling to 4 ms: one fstat per poll, only while starting).
/// Cancel-safe: drop it to stop.
pub(super) async fn ready_line(mut follow: Follow, pid: i32, port: u16) -> Result<(), String> {
    let mut pause = Duration::from_millis(1);
    loop {
        for line in follow
            .new_lines()
            .map_err(|e| format!("reading the log: {e}"))?
        {
            if let Some((p, q)) = parse_ready_line(&line) {
                if q != pid {
                    return Err(format!(
                        "ready line names pid {q}, but the worker is pid {pid}"
                    ));
                }
                if p != port {
                    return Err(format!("worker is ready on port {p}, expected {port}"));
                }
                return Ok(());
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(4));
    }
}

/// Connects until the port accepts (for runtimes that bind their own port).
pub(super) async fn tcp_connect_ready(addr: SocketAddr) {
    let mut pause = Duration::from_millis(5);
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// One health check: `GET /healthz` must answer 2xx within `timeout`.
pub(super) async fn healthz(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let check = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)
            .await
            .map_err(|e| format!("read: {e}"))?;
        match &head[..] {
            [b'H', b'T', b'T', b'P', b'/', _, b'.', _, b' ', b'2', _, _] => Ok(()),
            other => Err(format!("status line {:?}", String::from_utf8_lossy(other))),
        }
    };
    tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// One health check for runtimes without `/healthz`: the port accepts a connection.
pub(super) async fn tcp_alive(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_parses() {
        assert_eq!(
            parse_ready_line("wirebot-worker ready port=23001 pid=77"),
            Some((23001, 77))
        );
        assert_eq!(
            parse_ready_line("wirebot-worker ready pid=77 port=1\n"),
            Some((1, 77))
        );
        assert_eq!(parse_ready_line("something else"), None);
        assert_eq!(parse_ready_line("wirebot-worker ready port=x pid=1"), None);
    }
}

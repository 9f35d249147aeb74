//! Socket activation: takes over the listening TCP socket a parent passed as fd 3 (`LISTEN_FDS=1`, `LISTEN_PID`).

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::Error;

/// The first passed descriptor, as systemd's `sd_listen_fds` defines it.
const SD_LISTEN_FDS_START: i32 = 3;

/// Returns the inherited listener when `LISTEN_FDS=1` and `LISTEN_PID` names this process, `None` when the
/// variables are absent or meant for another process. `env` is a lookup so tests need not mutate the environment.
pub fn inherited_listener(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<TcpListener>, Error> {
    let Some(fds) = env("LISTEN_FDS") else {
        return Ok(None);
    };
    let pid = env("LISTEN_PID").unwrap_or_default();
    if pid.trim() != std::process::id().to_string() {
        return Ok(None);
    }
    if fds.trim() != "1" {
        return Err(Error::ListenFd {
            message: format!("LISTEN_FDS={fds}, expected exactly 1"),
        });
    }
    let sock =
        nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(SD_LISTEN_FDS_START)
            .map_err(|e| Error::ListenFd {
                message: format!("fd 3 is not a socket: {e}"),
            })?;
    use nix::sys::socket::{AddressFamily, SockaddrLike};
    if !matches!(
        sock.family(),
        Some(AddressFamily::Inet | AddressFamily::Inet6)
    ) {
        return Err(Error::ListenFd {
            message: "fd 3 is not a TCP/IP socket".into(),
        });
    }
    let fd = take_fd3();
    let listener = TcpListener::from(fd);
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::ListenFd {
            message: format!("set fd 3 non-blocking: {e}"),
        })?;
    Ok(Some(listener))
}

/// Takes ownership of fd 3.
#[allow(unsafe_code)]
fn take_fd3() -> OwnedFd {
    // SAFETY: called at most once per process, only after LISTEN_PID proved the parent passed fd 3 to us; nothing
    // else in this process opens, uses or closes fd 3 (std opens files above the inherited range only after it is
    // occupied), so ownership moves here exactly once.
    unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) }
}

//! Reading `/proc/<pid>`: the process start time (to tell a reused pid from ours) and `status` fields.

use std::fs;
use std::path::PathBuf;

use super::Error;

/// Start time of `pid` in clock ticks since boot: field 22 of `/proc/<pid>/stat`. Together with the pid it names one
/// process for the life of the machine (a reused pid gets a later start time). `None` when the process is gone.
pub fn start_time(pid: i32) -> Result<Option<u64>, Error> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ESRCH) =>
        {
            return Ok(None);
        }
        Err(source) => {
            return Err(Error::Io {
                op: "read",
                path,
                source,
            });
        }
    };
    parse_start_time(&text)
        .map(Some)
        .ok_or_else(|| Error::ProcParse {
            path,
            reason: "no field 22".to_owned(),
        })
}

/// The comm field (2) may contain spaces and parentheses, so fields are counted after the *last* `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // after ")" come fields 3.. ; field 22 is the 20th of them.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// One `Key:\tvalue` line of `/proc/<pid>/status` (e.g. `Uid`, `CapEff`, `NoNewPrivs`, `Seccomp`).
pub fn status_field(pid: i32, key: &str) -> Result<Option<String>, Error> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = fs::read_to_string(&path).map_err(|source| Error::Io {
        op: "read",
        path,
        source,
    })?;
    Ok(text.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')
            .map(|v| v.trim().to_owned())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_comm() {
        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_start_time(stat), Some(123456));
    }

    #[test]
    fn own_start_time_is_stable() {
        let me = i32::try_from(std::process::id()).unwrap();
        let a = start_time(me).unwrap().unwrap();
        assert_eq!(start_time(me).unwrap(), Some(a));
    }
}

//! Session transcripts: `<sessionId>.jsonl` in pi-coding-agent format v3, append-only, one fsync per appended entry.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::{Value, json};

use crate::Error;
use crate::atomic;

/// ISO-8601 UTC timestamp with milliseconds, as Clawdbot writes them.
pub fn iso_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Creates the transcript with its `session` header line (durable before returning).
pub fn create(path: &Path, session_id: &str, cwd: &Path) -> Result<(), Error> {
    let header = json!({"type": "session", "version": 3, "id": session_id, "timestamp": iso_now(), "cwd": cwd});
    atomic::append_line(path, &header.to_string())
}

/// The id of the last entry (the `parentId` of the next one); `None` for a fresh transcript.
/// A torn last line (crash mid-write) is skipped; [`append`] then starts on a fresh line.
pub fn last_entry_id(path: &Path) -> Result<Option<String>, Error> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open transcript", path, e)),
    };
    let mut last = None;
    for line in BufReader::new(f).lines() {
        let line = line.map_err(|e| Error::io("read transcript", path, e))?;
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v.get("type").and_then(Value::as_str) != Some("session")
            && let Some(id) = v.get("id").and_then(Value::as_str)
        {
            last = Some(id.to_string());
        }
    }
    Ok(last)
}

/// Appends one entry (`{"type":…, "id", "parentId", "timestamp", …fields}`) and returns its id.
pub fn append(
    path: &Path,
    parent: Option<&str>,
    kind: &str,
    fields: Value,
) -> Result<String, Error> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut entry = json!({"type": kind, "id": id, "parentId": parent, "timestamp": iso_now()});
    if let (Some(e), Value::Object(f)) = (entry.as_object_mut(), fields) {
        e.extend(f);
    }
    let mut line = entry.to_string();
    if !ends_with_newline(path)? {
        line.insert(0, '\n');
    }
    atomic::append_line(path, &line)?;
    Ok(id)
}

fn ends_with_newline(path: &Path) -> Result<bool, Error> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(Error::io("open transcript", path, e)),
    };
    let len = f
        .metadata()
        .map_err(|e| Error::io("stat transcript", path, e))?
        .len();
    if len == 0 {
        return Ok(true);
    }
    let mut b = [0u8; 1];
    f.seek(SeekFrom::End(-1))
        .and_then(|_| f.read_exact(&mut b))
        .map_err(|e| Error::io("read transcript", path, e))?;
    Ok(b[0] == b'\n')
}

/// The `message` objects of the transcript in order (other entry types and torn lines skipped), at most the last `limit`.
pub fn messages(path: &Path, limit: usize) -> Result<Vec<Value>, Error> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("open transcript", path, e)),
    };
    let mut out = std::collections::VecDeque::new();
    for line in BufReader::new(f).lines() {
        let line = line.map_err(|e| Error::io("read transcript", path, e))?;
        let Ok(mut v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v.get("type").and_then(Value::as_str) != Some("message") {
            continue;
        }
        if let Some(m) = v.get_mut("message").map(Value::take) {
            out.push_back(m);
            if out.len() > limit {
                out.pop_front();
            }
        }
    }
    Ok(out.into())
}

/// The concatenated text blocks of a transcript message.
pub fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        create(&p, "sid", dir.path()).unwrap();
        assert_eq!(last_entry_id(&p).unwrap(), None);
        let m = |t: &str| json!({"message": {"role": "user", "content": [{"type": "text", "text": t}]}});
        let a = append(&p, None, "message", m("one")).unwrap();
        assert_eq!(last_entry_id(&p).unwrap().as_deref(), Some(a.as_str()));
        atomic::append_line(&p, "{\"type\":\"message\",\"id\":\"torn").unwrap();
        // Simulate a crash mid-line: strip the trailing newline the helper added.
        let text = std::fs::read_to_string(&p).unwrap();
        crate::atomic::write_file(&p, text.trim_end().as_bytes(), 0o600).unwrap();
        let b = append(&p, Some(&a), "message", m("two")).unwrap();
        let msgs = messages(&p, 10).unwrap();
        assert_eq!(
            msgs.iter().map(message_text).collect::<Vec<_>>(),
            ["one", "two"]
        );
        assert_eq!(last_entry_id(&p).unwrap().as_deref(), Some(b.as_str()));
        assert_eq!(messages(&p, 1).unwrap().len(), 1);
    }
}

//! The workspace's memory files: which files count (MEMORY.md, memory/**/*.md), safe reads by line range,
//! atomic appends to daily logs, and the memory context a main session starts with.

use std::path::{Component, Path, PathBuf};

use chrono::NaiveDate;

use super::atomic::write_atomic;
use super::error::{Error, Result};

/// The curated long-term file names, in the order Clawdbot looks for them.
pub(crate) const LONG_TERM_FILES: [&str; 2] = ["MEMORY.md", "memory.md"];
/// The folder of daily logs and other notes.
pub(crate) const MEMORY_DIR: &str = "memory";
/// Characters of one file put into the session-start context before it is cut.
const CONTEXT_FILE_MAX_CHARS: usize = 24_000;

/// Every memory file of `workspace` as (workspace-relative path with `/`, absolute path), sorted.
/// Symlinks and dot-entries are skipped so the index never reaches outside the workspace.
pub(crate) fn list_memory_files(workspace: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for name in LONG_TERM_FILES {
        let path = workspace.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_file() => {
                // On case-insensitive filesystems both names are the same file; keep one.
                if !out
                    .iter()
                    .any(|(_, p): &(String, PathBuf)| same_file(p, &path))
                {
                    out.push((name.to_owned(), path));
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", path)(e)),
        }
    }
    let dir = workspace.join(MEMORY_DIR);
    walk(&dir, MEMORY_DIR, &mut out)?;
    out.sort();
    Ok(out)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read dir", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io("read dir", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || name == "node_modules" {
            continue;
        }
        let file_type = entry.file_type().map_err(Error::io("stat", entry.path()))?;
        let child_rel = format!("{rel}/{name}");
        if file_type.is_dir() {
            walk(&entry.path(), &child_rel, out)?;
        } else if file_type.is_file() && name.ends_with(".md") {
            out.push((child_rel, entry.path()));
        }
    }
    Ok(())
}

/// Resolves a path a caller (usually the model) gave to a memory file inside `workspace`: relative or absolute
/// under the workspace, no `..`, MEMORY.md / memory.md or `memory/**/*.md`, and still inside after symlinks.
pub(crate) fn resolve_memory_path(workspace: &Path, requested: &str) -> Result<(String, PathBuf)> {
    let bad = |reason| Error::NotMemoryPath {
        path: requested.to_owned(),
        reason,
    };
    let raw = Path::new(requested.trim());
    let relative = if raw.is_absolute() {
        raw.strip_prefix(workspace)
            .map_err(|_| bad("outside the workspace"))?
    } else {
        raw
    };
    let mut parts = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(p) => {
                parts.push(p.to_str().ok_or_else(|| bad("not UTF-8"))?.to_owned())
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(bad("contains ..")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("outside the workspace")),
        }
    }
    let rel = parts.join("/");
    let allowed = LONG_TERM_FILES.contains(&rel.as_str())
        || (parts.len() >= 2
            && parts[0] == MEMORY_DIR
            && rel.ends_with(".md")
            && !parts.iter().any(|p| p.starts_with('.')));
    if !allowed {
        return Err(bad("only MEMORY.md and memory/**/*.md are memory files"));
    }
    let path = workspace.join(&rel);
    let real = path.canonicalize().map_err(Error::io("open", &path))?;
    let root = workspace
        .canonicalize()
        .map_err(Error::io("open workspace", workspace))?;
    if !real.starts_with(&root) {
        return Err(bad("resolves outside the workspace"));
    }
    Ok((rel, path))
}

/// `lines` lines of a memory file starting at 1-based `from_line` (whole file when both are `None`).
pub(crate) fn read_lines(
    workspace: &Path,
    requested: &str,
    from_line: Option<usize>,
    lines: Option<usize>,
) -> Result<String> {
    let (_, path) = resolve_memory_path(workspace, requested)?;
    let content = std::fs::read_to_string(&path).map_err(Error::io("read", &path))?;
    let from = from_line.unwrap_or(1).max(1);
    let selected: Vec<&str> = content
        .split('\n')
        .skip(from - 1)
        .take(lines.unwrap_or(usize::MAX))
        .collect();
    Ok(selected.join("\n"))
}

/// The workspace-relative path of the daily log for `date`.
pub fn daily_log_path(date: NaiveDate) -> String {
    format!("{MEMORY_DIR}/{}.md", date.format("%Y-%m-%d"))
}

/// Appends `text` as a new paragraph to `rel` under `workspace` (creating it with `header` when new), rewriting
/// the whole file atomically. Callers serialise appends to one workspace.
pub(crate) fn append_paragraph(
    workspace: &Path,
    rel: &str,
    header: &str,
    text: &str,
) -> Result<PathBuf> {
    let path = workspace.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io("create dir", parent))?;
    }
    let mut content = match std::fs::read_to_string(&path) {
        Ok(existing) => existing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => header.to_owned(),
        Err(e) => return Err(Error::io("read", &path)(e)),
    };
    if !content.is_empty() && !content.ends_with('\n') {
        content.push('\n');
    }
    if !content.is_empty() && !content.ends_with("\n\n") {
        content.push('\n');
    }
    content.push_str(text.trim());
    content.push('\n');
    write_atomic(&path, content.as_bytes(), 0o600).map_err(Error::io("write", &path))?;
    Ok(path)
}

/// What a main session starts with: MEMORY.md, then yesterday's and today's daily logs, each under a heading.
/// Missing files are left out; an empty string means there is no memory yet.
pub fn session_start_context(workspace: &Path, today: NaiveDate) -> String {
    let mut sections = Vec::new();
    if let Some((name, text)) = LONG_TERM_FILES
        .iter()
        .find_map(|name| read_for_context(&workspace.join(name)).map(|t| (*name, t)))
    {
        sections.push(format!("## Long-term memory ({name})\n\n{text}"));
    }
    let days = [(today.pred_opt(), "yesterday"), (Some(today), "today")];
    for (day, label) in days {
        let Some(day) = day else { continue };
        let rel = daily_log_path(day);
        if let Some(text) = read_for_context(&workspace.join(&rel)) {
            sections.push(format!("## Daily log {rel} ({label})\n\n{text}"));
        }
    }
    if sections.is_empty() {
        return String::new();
    }
    format!("# Memory\n\n{}\n", sections.join("\n\n"))
}

fn read_for_context(path: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text.chars().count() <= CONTEXT_FILE_MAX_CHARS {
        return Some(text.to_owned());
    }
    let cut: String = text.chars().take(CONTEXT_FILE_MAX_CHARS).collect();
    Some(format!("{cut}\n…[truncated; use memory_get for the rest]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("memory/projects")).unwrap();
        std::fs::create_dir_all(dir.path().join("memory/.git")).unwrap();
        for (p, t) in [
            ("MEMORY.md", "# Long term\nGoal: ship v1\n"),
            ("memory/2026-01-02.md", "day two\nline 2\nline 3\n"),
            ("memory/projects/acme.md", "acme\n"),
            ("memory/.git/x.md", "hidden\n"),
            ("memory/notes.txt", "not markdown\n"),
            ("other.md", "not memory\n"),
        ] {
            std::fs::File::create(dir.path().join(p)).unwrap();
            super::write_atomic(&dir.path().join(p), t.as_bytes(), 0o600).unwrap();
        }
        dir
    }

    #[test]
    fn lists_long_term_and_nested_markdown_only() {
        let dir = ws();
        let rels: Vec<String> = list_memory_files(dir.path())
            .unwrap()
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(
            rels,
            [
                "MEMORY.md",
                "memory/2026-01-02.md",
                "memory/projects/acme.md"
            ]
        );
    }

    #[test]
    fn get_reads_a_line_range_and_rejects_everything_else() {
        let dir = ws();
        assert_eq!(
            read_lines(dir.path(), "memory/2026-01-02.md", Some(2), Some(2)).unwrap(),
            "line 2\nline 3"
        );
        let abs = dir.path().join("MEMORY.md");
        assert_eq!(
            read_lines(dir.path(), abs.to_str().unwrap(), None, Some(1)).unwrap(),
            "# Long term"
        );
        for bad in [
            "../etc/passwd",
            "memory/../other.md",
            "other.md",
            "/etc/passwd",
            "memory/notes.txt",
            "memory/.git/x.md",
            "",
        ] {
            let err = read_lines(dir.path(), bad, None, None).unwrap_err();
            assert!(matches!(err, Error::NotMemoryPath { .. }), "{bad}: {err}");
        }
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("memory/escape.md")).unwrap();
        assert!(matches!(
            read_lines(dir.path(), "memory/escape.md", None, None).unwrap_err(),
            Error::NotMemoryPath { .. }
        ));
    }

    #[test]
    fn append_creates_then_adds_paragraphs() {
        let dir = tempfile::tempdir().unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 3, 4).unwrap();
        let rel = daily_log_path(day);
        assert_eq!(rel, "memory/2026-03-04.md");
        let path = append_paragraph(dir.path(), &rel, "# 2026-03-04\n", "first").unwrap();
        append_paragraph(dir.path(), &rel, "# 2026-03-04\n", "second\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            "# 2026-03-04\n\nfirst\n\nsecond\n"
        );
    }

    #[test]
    fn session_context_has_memory_then_yesterday_then_today() {
        let dir = ws();
        let today = NaiveDate::from_ymd_opt(2026, 1, 3).unwrap();
        let ctx = session_start_context(dir.path(), today);
        let lt = ctx.find("Goal: ship v1").unwrap();
        let y = ctx.find("memory/2026-01-02.md (yesterday)").unwrap();
        assert!(lt < y);
        assert!(!ctx.contains("(today)"));
        assert_eq!(
            session_start_context(tempfile::tempdir().unwrap().path(), today),
            ""
        );
    }
}

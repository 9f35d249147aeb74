//! The system prompt for a run: identity, the workspace's bootstrap files, extra per-run instructions, and the
//! sections later features contribute (skills' `<available_skills>`, memory recall) via [`PromptInput::sections`].

use std::path::Path;

use crate::config::AgentConfig;

/// Workspace files read into the prompt when present, in this order (Clawdbot's bootstrap set).
pub const BOOTSTRAP_FILES: &[&str] =
    &["AGENTS.md", "SOUL.md", "IDENTITY.md", "USER.md", "TOOLS.md"];
/// Per-file cap so a huge file cannot blow the context.
const MAX_FILE_CHARS: usize = 20_000;

/// What the prompt is built from.
#[derive(Debug, Default)]
pub struct PromptInput<'a> {
    pub extra: Option<&'a str>,
    /// Extra titled sections (e.g. `("Skills", "<available_skills>…")`) appended in order.
    pub sections: Vec<(String, String)>,
}

/// Builds the system prompt for `agent`. Reads bootstrap files from the workspace (never writes there).
pub fn build(agent: &AgentConfig, input: &PromptInput<'_>) -> String {
    let mut out = String::new();
    let name = agent.name.as_deref().unwrap_or(agent.id.as_str());
    out.push_str(&format!("You are {name}, a personal assistant running inside Wirebot (a Clawdbot-compatible gateway).\n"));
    out.push_str(&format!(
        "Current time: {}\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    ));
    for file in BOOTSTRAP_FILES {
        if let Some(text) = read_capped(&agent.workspace.join(file)) {
            out.push_str(&format!("\n## {file}\n{text}\n"));
        }
    }
    for (title, body) in &input.sections {
        out.push_str(&format!("\n## {title}\n{body}\n"));
    }
    if let Some(extra) = input.extra.filter(|e| !e.trim().is_empty()) {
        out.push_str(&format!("\n{extra}\n"));
    }
    out
}

fn read_capped(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(text.chars().take(MAX_FILE_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_id::AgentId;
    use crate::config::ModelChoice;

    #[test]
    fn includes_bootstrap_files_sections_and_extra() {
        let dir = tempfile::tempdir().unwrap();
        crate::atomic::write_file(&dir.path().join("SOUL.md"), b"Be kind.", 0o600).unwrap();
        let agent = AgentConfig {
            id: AgentId::main(),
            name: Some("Ada".into()),
            identity: None,
            workspace: dir.path().into(),
            agent_dir: dir.path().into(),
            store_path: dir.path().join("sessions.json"),
            sessions_dir: dir.path().into(),
            model: ModelChoice::default(),
        };
        let p = build(
            &agent,
            &PromptInput {
                extra: Some("Reply in French."),
                sections: vec![("Skills".into(), "<available_skills/>".into())],
            },
        );
        assert!(p.contains("You are Ada"));
        assert!(p.contains("## SOUL.md\nBe kind."));
        assert!(p.contains("## Skills\n<available_skills/>"));
        assert!(p.ends_with("Reply in French.\n"));
        assert!(!p.contains("AGENTS.md"));
    }
}

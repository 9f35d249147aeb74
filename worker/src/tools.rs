//! Tools offered to the model during a run: the built-in memory, cron and skill tools of
//! [`crate::memory::tools`], offered when their handle exists (memory enabled, cron running, a skill eligible).
//! The run loop in `chat_run.rs` executes the calls and writes them and their results to the transcript.

use serde_json::Value;

use crate::config::AgentConfig;
use crate::features;
use crate::memory::tools::{self as builtin, ToolContext};
use crate::providers::ToolSpec;
use crate::state::Gateway;

/// The tools available to `agent`'s runs.
pub fn specs(gw: &Gateway, agent: &AgentConfig) -> Vec<ToolSpec> {
    let memory = features::memory_enabled(gw, agent);
    let cron = gw.features.cron.for_agent(&agent.id).is_some();
    let skills = !features::eligible_skills(gw, agent).is_empty();
    builtin::tool_definitions()
        .into_iter()
        .filter(|d| match d.name {
            n if n.starts_with("memory_") => memory,
            n if n.starts_with("cron_") => cron,
            _ => skills,
        })
        .map(|d| ToolSpec {
            name: d.name.to_string(),
            description: d.description.to_string(),
            input_schema: d.input_schema,
        })
        .collect()
}

/// Executes one tool call; `Err` text goes back to the model as an error result.
pub async fn call(
    gw: &Gateway,
    agent: &AgentConfig,
    name: &str,
    input: &Value,
) -> Result<String, String> {
    let memory = if name.starts_with("memory_") {
        let ix = features::memory_index(gw, agent).await;
        if let (Some(ix), "memory_search") = (&ix, name)
            && let Err(e) = ix.sync().await
        {
            tracing::warn!(agent = %agent.id, error = %e, "memory sync before search failed");
        }
        ix
    } else {
        None
    };
    let skills = if name == "skill_read" {
        features::eligible_skills(gw, agent)
    } else {
        Vec::new()
    };
    let ctx = ToolContext {
        memory,
        cron: gw.features.cron.for_agent(&agent.id),
        skills,
        timezone: gw.features.timezone,
        agent_id: Some(agent.id.to_string()),
    };
    match builtin::execute(&ctx, name, input.clone()).await {
        Ok(Value::String(s)) => Ok(s),
        Ok(v) => Ok(v.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

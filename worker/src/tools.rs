//! Tools offered to the model during a run. Empty for now: memory and skills register theirs here
//! (one entry in [`specs`], one arm in [`call`]); the run loop in `chat_run.rs` already executes tool calls.

use serde_json::Value;

use crate::config::AgentConfig;
use crate::providers::ToolSpec;
use crate::state::Gateway;

/// The tools available to `agent`'s runs.
pub fn specs(_gw: &Gateway, _agent: &AgentConfig) -> Vec<ToolSpec> {
    Vec::new()
}

/// Executes one tool call; `Err` text goes back to the model as an error result.
pub async fn call(
    _gw: &Gateway,
    _agent: &AgentConfig,
    name: &str,
    _input: &Value,
) -> Result<String, String> {
    Err(format!("unknown tool {name:?}"))
}

//! `AgentId`: a validated agent id (`[a-z0-9][a-z0-9_-]{0,63}`), safe as a path component and a session-key part.

use std::fmt;

use crate::Error;

/// An agent id as Clawdbot normalises it (lowercase); validated once, so it can be joined into paths.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct AgentId(String);

impl AgentId {
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let id = raw.trim().to_ascii_lowercase();
        let mut chars = id.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !first_ok || !rest_ok || id.len() > 64 {
            return Err(Error::AgentId {
                id: raw.to_string(),
            });
        }
        Ok(AgentId(id))
    }

    pub fn main() -> Self {
        AgentId("main".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_ids_and_rejects_path_tricks() {
        assert_eq!(AgentId::parse("Alice").unwrap().as_str(), "alice");
        assert!(AgentId::parse("bob_2-x").is_ok());
        for bad in ["", "../x", "a/b", "-a", "a b", "é", &"a".repeat(65)] {
            assert!(AgentId::parse(bad).is_err(), "{bad:?}");
        }
    }
}

//! `SessionKey`: canonical session keys per Clawdbot's grammar (`agent:<agentId>:<rest>`), and their constructors.

use std::fmt;

use crate::Error;
use crate::agent_id::AgentId;
use crate::config::DmScope;

/// A canonical, lowercase session key that always names its agent: `agent:<agentId>:<rest>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct SessionKey(String);

const MAX_LEN: usize = 512;

impl SessionKey {
    /// Canonicalises a client-supplied key. `main` (or the configured main key) becomes `agent:<default>:<mainKey>`;
    /// other keys without the `agent:` prefix (`cron:<job>`, `hook:<uuid>`, `openai:<uuid>`, `dm:<peer>`…) are
    /// stored under the default agent, as Clawdbot's store does.
    pub fn resolve(raw: &str, default_agent: &AgentId, main_key: &str) -> Result<Self, Error> {
        let key = raw.trim().to_lowercase();
        let bad = |reason| Error::SessionKey {
            key: raw.to_string(),
            reason,
        };
        if key.is_empty() {
            return Err(bad("empty"));
        }
        if key.len() > MAX_LEN {
            return Err(bad("longer than 512 bytes"));
        }
        if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("contains whitespace or control characters"));
        }
        if let Some(rest) = key.strip_prefix("agent:") {
            let Some((agent, tail)) = rest.split_once(':') else {
                return Err(bad("expected agent:<agentId>:<key>"));
            };
            let agent = AgentId::parse(agent).map_err(|_| bad("invalid agent id"))?;
            if tail.is_empty() {
                return Err(bad("expected agent:<agentId>:<key>"));
            }
            let tail = if tail == "main" { main_key } else { tail };
            return Ok(SessionKey(format!("agent:{agent}:{tail}")));
        }
        if key == "main" || key == main_key {
            return Ok(Self::main(default_agent, main_key));
        }
        Ok(SessionKey(format!("agent:{default_agent}:{key}")))
    }

    /// `agent:<id>:<mainKey>`: the agent's private main session.
    pub fn main(agent: &AgentId, main_key: &str) -> Self {
        SessionKey(format!("agent:{agent}:{main_key}"))
    }

    /// The key for a direct message, per `session.dmScope`.
    pub fn direct(
        agent: &AgentId,
        main_key: &str,
        scope: DmScope,
        channel: &str,
        peer: &str,
    ) -> Self {
        let (channel, peer) = (channel.to_lowercase(), peer.to_lowercase());
        match scope {
            DmScope::Main => Self::main(agent, main_key),
            DmScope::PerPeer => SessionKey(format!("agent:{agent}:dm:{peer}")),
            DmScope::PerChannelPeer => SessionKey(format!("agent:{agent}:{channel}:dm:{peer}")),
        }
    }

    /// `agent:<id>:<channel>:group:<groupId>`.
    pub fn group(agent: &AgentId, channel: &str, group: &str) -> Self {
        SessionKey(format!(
            "agent:{agent}:{}:group:{}",
            channel.to_lowercase(),
            group.to_lowercase()
        ))
    }

    /// An isolated cron run: `agent:<id>:cron:<jobId>`.
    pub fn cron(agent: &AgentId, job_id: &str) -> Self {
        SessionKey(format!("agent:{agent}:cron:{}", job_id.to_lowercase()))
    }

    /// A fresh hook session: `agent:<id>:hook:<uuid>`.
    pub fn hook(agent: &AgentId) -> Self {
        SessionKey(format!("agent:{agent}:hook:{}", uuid::Uuid::new_v4()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The agent the session belongs to (validated at construction).
    pub fn agent_id(&self) -> AgentId {
        let id = self
            .0
            .strip_prefix("agent:")
            .and_then(|r| r.split(':').next())
            .unwrap_or("main");
        AgentId::parse(id).unwrap_or_else(|_| AgentId::main())
    }

    /// The part after `agent:<id>:`.
    pub fn rest(&self) -> &str {
        self.0
            .strip_prefix("agent:")
            .and_then(|r| r.split_once(':'))
            .map(|(_, t)| t)
            .unwrap_or(&self.0)
    }

    /// `group` for group/channel chats, `direct` otherwise (Clawdbot's `kind` in `sessions.list`).
    pub fn kind(&self) -> &'static str {
        let rest = self.rest();
        if rest.contains(":group:") || rest.contains(":channel:") {
            "group"
        } else {
            "direct"
        }
    }

    /// Isolated cron sessions are pruned from the index once old (bounded `sessions.json`).
    pub fn is_isolated_cron(&self) -> bool {
        self.rest().starts_with("cron:")
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expected: &str) {
        let main = AgentId::main();
        assert_eq!(
            SessionKey::resolve(raw, &main, "main").unwrap().as_str(),
            expected,
            "{raw}"
        );
    }

    #[test]
    fn canonicalises_per_the_grammar() {
        check("main", "agent:main:main");
        check("MAIN", "agent:main:main");
        check("agent:main:main", "agent:main:main");
        check("agent:bob:main", "agent:bob:main");
        check("agent:bob:telegram:dm:+1555", "agent:bob:telegram:dm:+1555");
        check("cron:job-1", "agent:main:cron:job-1");
        check("hook:abc", "agent:main:hook:abc");
        check("openai:xyz", "agent:main:openai:xyz");
        let bob = AgentId::parse("bob").unwrap();
        assert_eq!(
            SessionKey::resolve("main", &bob, "home").unwrap().as_str(),
            "agent:bob:home"
        );
        assert_eq!(
            SessionKey::resolve("agent:bob:main", &bob, "home")
                .unwrap()
                .as_str(),
            "agent:bob:home"
        );
    }

    #[test]
    fn rejects_malformed_keys() {
        let main = AgentId::main();
        for bad in [
            "",
            "agent:",
            "agent:bob",
            "agent:../x:main",
            "a b",
            "agent:bob:",
        ] {
            assert!(SessionKey::resolve(bad, &main, "main").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn constructors_and_accessors() {
        let a = AgentId::parse("alice").unwrap();
        assert_eq!(
            SessionKey::direct(&a, "main", DmScope::PerPeer, "telegram", "U1").as_str(),
            "agent:alice:dm:u1"
        );
        assert_eq!(
            SessionKey::direct(&a, "main", DmScope::PerChannelPeer, "telegram", "u1").as_str(),
            "agent:alice:telegram:dm:u1"
        );
        assert_eq!(
            SessionKey::direct(&a, "main", DmScope::Main, "telegram", "u1").as_str(),
            "agent:alice:main"
        );
        let g = SessionKey::group(&a, "discord", "G9");
        assert_eq!(g.as_str(), "agent:alice:discord:group:g9");
        assert_eq!(g.kind(), "group");
        assert_eq!(g.agent_id(), a);
        assert!(SessionKey::cron(&a, "j").is_isolated_cron());
        assert!(
            SessionKey::hook(&a)
                .as_str()
                .starts_with("agent:alice:hook:")
        );
    }
}

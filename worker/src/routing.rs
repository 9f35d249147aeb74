//! Binding resolution: which agent answers an inbound message (peer > guild > team > account > channel > default).

use crate::config::Binding;

/// Where an inbound message came from.
#[derive(Clone, Debug, Default)]
pub struct RouteInput<'a> {
    pub channel: &'a str,
    /// `None` = the channel's default account.
    pub account_id: Option<&'a str>,
    /// `(kind, id)` with kind `dm` | `group` | `channel`.
    pub peer: Option<(&'a str, &'a str)>,
    pub guild_id: Option<&'a str>,
    pub team_id: Option<&'a str>,
}

/// Returns the agent id of the most specific matching binding, or `default_agent`. Pure.
pub fn resolve_agent<'b>(
    bindings: &'b [Binding],
    input: &RouteInput<'_>,
    default_agent: &'b str,
) -> &'b str {
    let channel = input.channel.to_ascii_lowercase();
    let account = input.account_id.unwrap_or("default");
    let candidates: Vec<&Binding> = bindings
        .iter()
        .filter(|b| b.channel.as_deref() == Some(channel.as_str()))
        .filter(|b| match b.account_id.as_deref() {
            Some("*") => true,
            Some(a) => a == account,
            None => account == "default",
        })
        .collect();
    let no_scope = |b: &&Binding| b.peer.is_none() && b.guild_id.is_none() && b.team_id.is_none();
    let tiers: [&dyn Fn(&&Binding) -> bool; 5] = [
        &|b| matches!((&b.peer, input.peer), (Some((k, i)), Some((pk, pi))) if k == pk && i == pi),
        &|b| b.peer.is_none() && b.guild_id.is_some() && b.guild_id.as_deref() == input.guild_id,
        &|b| b.peer.is_none() && b.team_id.is_some() && b.team_id.as_deref() == input.team_id,
        &|b| no_scope(b) && b.account_id.as_deref().is_some_and(|a| a != "*"),
        &|b| no_scope(b) && matches!(b.account_id.as_deref(), None | Some("*")),
    ];
    for tier in tiers {
        if let Some(b) = candidates.iter().find(|b| tier(b)) {
            return &b.agent_id;
        }
    }
    default_agent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(agent: &str, channel: &str) -> Binding {
        Binding {
            agent_id: agent.into(),
            channel: Some(channel.into()),
            ..Default::default()
        }
    }

    #[test]
    fn most_specific_wins() {
        let bindings = vec![
            Binding {
                account_id: Some("*".into()),
                ..b("chan", "telegram")
            },
            Binding {
                account_id: Some("bot-a".into()),
                ..b("acct", "telegram")
            },
            Binding {
                account_id: Some("*".into()),
                team_id: Some("T1".into()),
                ..b("team", "slack")
            },
            Binding {
                account_id: Some("*".into()),
                guild_id: Some("G1".into()),
                ..b("guild", "discord")
            },
            Binding {
                account_id: Some("*".into()),
                peer: Some(("dm".into(), "+1".into())),
                ..b("peer", "telegram")
            },
        ];
        let r = |input: RouteInput<'_>| resolve_agent(&bindings, &input, "dflt").to_string();
        let tg = |account, peer| RouteInput {
            channel: "telegram",
            account_id: account,
            peer,
            ..Default::default()
        };
        assert_eq!(r(tg(Some("bot-a"), Some(("dm", "+1")))), "peer");
        assert_eq!(r(tg(Some("bot-a"), Some(("dm", "+2")))), "acct");
        assert_eq!(r(tg(Some("bot-b"), None)), "chan");
        assert_eq!(
            r(RouteInput {
                channel: "discord",
                guild_id: Some("G1"),
                ..Default::default()
            }),
            "guild"
        );
        assert_eq!(
            r(RouteInput {
                channel: "discord",
                guild_id: Some("G2"),
                ..Default::default()
            }),
            "dflt"
        );
        assert_eq!(
            r(RouteInput {
                channel: "slack",
                team_id: Some("T1"),
                ..Default::default()
            }),
            "team"
        );
        assert_eq!(
            r(RouteInput {
                channel: "whatsapp",
                ..Default::default()
            }),
            "dflt"
        );
    }

    #[test]
    fn binding_without_account_matches_default_account_only() {
        let bindings = vec![b("x", "telegram")];
        let input = |a| RouteInput {
            channel: "Telegram",
            account_id: a,
            ..Default::default()
        };
        assert_eq!(resolve_agent(&bindings, &input(None), "d"), "x");
        assert_eq!(resolve_agent(&bindings, &input(Some("other")), "d"), "d");
    }
}

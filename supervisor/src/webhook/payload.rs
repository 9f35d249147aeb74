//! The webhook body (contracts/webhooks.md §3) as types, and its validation: every rejection names the offending field
//! with a JSON pointer (`/data/state/tier`) and never echoes the value. Unknown fields are ignored for forward compatibility.

use serde_json::{Map, Value};

use super::Error;

/// Most members one `members.sync` request may carry.
pub const MAX_SYNC_MEMBERS: usize = 200;

/// Desired lifecycle status of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Suspended,
    Deleted,
}

/// Desired tier: a shared multi-agent worker, an own worker, or no bot at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Shared,
    Dedicated,
    None,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Suspended => "suspended",
            Status::Deleted => "deleted",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "active" => Some(Status::Active),
            "suspended" => Some(Status::Suspended),
            "deleted" => Some(Status::Deleted),
            _ => None,
        }
    }
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Shared => "shared",
            Tier::Dedicated => "dedicated",
            Tier::None => "none",
        }
    }

    pub fn parse(text: &str) -> Option<Tier> {
        match text {
            "shared" => Some(Tier::Shared),
            "dedicated" => Some(Tier::Dedicated),
            "none" => Some(Tier::None),
            _ => None,
        }
    }
}

/// What WordPress wants for one member; the reconciler converges on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DesiredState {
    pub status: Status,
    pub tier: Tier,
}

/// The WordPress identity and attributes of a member. The key is `(site, wp_user_id)`; email is only an attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WpUser {
    pub wp_user_id: u64,
    pub ring_leader_id: Option<String>,
    pub email: Option<String>,
    pub display_name: Option<String>,
}

/// One member's complete desired state with its per-user sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    pub user: WpUser,
    pub seq: u64,
    pub state: DesiredState,
}

/// The `type` of an event: why the state changed (the receiver converges on the state, not on the type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    MemberCreated,
    MemberTierChanged,
    MemberSuspended,
    MemberReactivated,
    MemberUpdated,
    MemberDeleted,
    MembersSync,
    WebhookTest,
}

impl EventType {
    fn parse(text: &str) -> Option<EventType> {
        Some(match text {
            "member.created" => EventType::MemberCreated,
            "member.tier_changed" => EventType::MemberTierChanged,
            "member.suspended" => EventType::MemberSuspended,
            "member.reactivated" => EventType::MemberReactivated,
            "member.updated" => EventType::MemberUpdated,
            "member.deleted" => EventType::MemberDeleted,
            "members.sync" => EventType::MembersSync,
            "webhook.test" => EventType::WebhookTest,
            _ => return None,
        })
    }

    /// The status an event of this type must carry, when the type implies one.
    fn implied_status(self) -> Option<Status> {
        match self {
            EventType::MemberCreated | EventType::MemberReactivated => Some(Status::Active),
            EventType::MemberSuspended => Some(Status::Suspended),
            EventType::MemberDeleted => Some(Status::Deleted),
            _ => None,
        }
    }
}

/// A validated delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventType,
    /// RFC 3339 time the event was produced, as sent.
    pub timestamp: String,
    /// `data.site`, normalised without a trailing slash.
    pub site: String,
    pub body: EventBody,
}

/// The part of the body that depends on the type.
#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    Member {
        member: MemberState,
        previous: Option<DesiredState>,
    },
    Sync {
        members: Vec<MemberState>,
    },
    Test,
}

fn invalid(pointer: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidPayload {
        pointer: pointer.into(),
        reason: reason.into(),
    }
}

fn object<'a>(value: Option<&'a Value>, pointer: &str) -> Result<&'a Map<String, Value>, Error> {
    match value {
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(invalid(pointer, "must be an object")),
        None => Err(invalid(pointer, "is required")),
    }
}

fn string<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    at: &str,
    max: usize,
) -> Result<Option<&'a str>, Error> {
    let pointer = format!("{at}/{key}");
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(invalid(pointer, "must not be empty")),
        Some(Value::String(s)) if s.chars().count() > max => Err(invalid(
            pointer,
            format!("must be at most {max} characters"),
        )),
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            Err(invalid(pointer, "must not contain control characters"))
        }
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(pointer, "must be a string")),
    }
}

fn required_string<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    at: &str,
    max: usize,
) -> Result<&'a str, Error> {
    string(map, key, at, max)?.ok_or_else(|| invalid(format!("{at}/{key}"), "is required"))
}

fn positive_integer(map: &Map<String, Value>, key: &str, at: &str) -> Result<u64, Error> {
    let pointer = format!("{at}/{key}");
    match map.get(key) {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v >= 1 && v <= i64::MAX as u64 => Ok(v),
            _ => Err(invalid(pointer, "must be a positive integer")),
        },
        Some(_) => Err(invalid(pointer, "must be a positive integer")),
        None => Err(invalid(pointer, "is required")),
    }
}

fn desired_state(value: Option<&Value>, at: &str) -> Result<DesiredState, Error> {
    let map = object(value, at)?;
    let status = required_string(map, "status", at, 32)?;
    let status = Status::parse(status).ok_or_else(|| {
        invalid(
            format!("{at}/status"),
            "must be one of active, suspended, deleted",
        )
    })?;
    let tier = required_string(map, "tier", at, 32)?;
    let tier = Tier::parse(tier).ok_or_else(|| {
        invalid(
            format!("{at}/tier"),
            "must be one of shared, dedicated, none",
        )
    })?;
    Ok(DesiredState { status, tier })
}

fn wp_user(value: Option<&Value>, at: &str) -> Result<WpUser, Error> {
    let map = object(value, at)?;
    let wp_user_id = positive_integer(map, "wp_user_id", at)?;
    let ring_leader_id = string(map, "ring_leader_id", at, 128)?.map(str::to_owned);
    let email = string(map, "email", at, 254)?;
    if email.is_some_and(|e| !e.contains('@')) {
        return Err(invalid(format!("{at}/email"), "must be an email address"));
    }
    let display_name = string(map, "display_name", at, 250)?.map(str::to_owned);
    Ok(WpUser {
        wp_user_id,
        ring_leader_id,
        email: email.map(str::to_owned),
        display_name,
    })
}

fn member_state(map: &Map<String, Value>, at: &str) -> Result<MemberState, Error> {
    let user = wp_user(map.get("user"), &format!("{at}/user"))?;
    let seq = positive_integer(map, "seq", at)?;
    let state = desired_state(map.get("state"), &format!("{at}/state"))?;
    Ok(MemberState { user, seq, state })
}

/// Parses and validates a raw body: 400 `malformed_json` if it is not JSON, 422 `invalid_payload` with a pointer otherwise.
pub fn parse(raw: &[u8]) -> Result<Event, Error> {
    let root: Value =
        serde_json::from_slice(raw).map_err(|source| Error::MalformedJson { source })?;
    let root = object(Some(&root), "")?;
    let type_text = required_string(root, "type", "", 64)?;
    let kind = EventType::parse(type_text).ok_or_else(|| {
        invalid(
            "/type",
            "must be one of member.created, member.tier_changed, member.suspended, member.reactivated, member.updated, \
             member.deleted, members.sync, webhook.test",
        )
    })?;
    let timestamp = required_string(root, "timestamp", "", 64)?;
    if chrono::DateTime::parse_from_rfc3339(timestamp).is_err() {
        return Err(invalid("/timestamp", "must be an RFC 3339 date-time"));
    }
    let data = object(root.get("data"), "/data")?;
    let site = super::secrets::normalize_site(required_string(data, "site", "/data", 2048)?);
    let body = match kind {
        EventType::WebhookTest => EventBody::Test,
        EventType::MembersSync => {
            let members = match data.get("members") {
                Some(Value::Array(items)) => items,
                Some(_) => return Err(invalid("/data/members", "must be an array")),
                None => return Err(invalid("/data/members", "is required")),
            };
            if members.len() > MAX_SYNC_MEMBERS {
                return Err(invalid(
                    "/data/members",
                    format!("must hold at most {MAX_SYNC_MEMBERS} members"),
                ));
            }
            let mut parsed: Vec<MemberState> = Vec::with_capacity(members.len());
            for (i, item) in members.iter().enumerate() {
                let at = format!("/data/members/{i}");
                let member = member_state(object(Some(item), &at)?, &at)?;
                if parsed
                    .iter()
                    .any(|m| m.user.wp_user_id == member.user.wp_user_id)
                {
                    return Err(invalid(
                        format!("{at}/user/wp_user_id"),
                        "repeats an earlier member of this sync",
                    ));
                }
                parsed.push(member);
            }
            EventBody::Sync { members: parsed }
        }
        _ => {
            let member = member_state(data, "/data")?;
            if let Some(status) = kind.implied_status()
                && member.state.status != status
            {
                return Err(invalid(
                    "/data/state/status",
                    format!("must be {} for {type_text}", status.as_str()),
                ));
            }
            let previous = match data.get("previous") {
                None | Some(Value::Null) => None,
                some => Some(desired_state(some, "/data/previous")?),
            };
            if let Some(cause) = data.get("cause").filter(|c| !c.is_null()) {
                let cause = object(Some(cause), "/data/cause")?;
                if let Some(reason) = string(cause, "reason", "/data/cause", 64)?
                    && !["payment_failed", "expired", "admin", "moderation"].contains(&reason)
                {
                    return Err(invalid(
                        "/data/cause/reason",
                        "must be one of payment_failed, expired, admin, moderation",
                    ));
                }
            }
            EventBody::Member { member, previous }
        }
    };
    Ok(Event {
        kind,
        timestamp: timestamp.to_owned(),
        site,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer_of(body: &str) -> String {
        match parse(body.as_bytes()) {
            Err(Error::InvalidPayload { pointer, .. }) => pointer,
            other => panic!("expected InvalidPayload for {body}, got {other:?}"),
        }
    }

    const CONTRACT_EXAMPLE: &str = r#"{"type":"member.tier_changed","timestamp":"2026-11-24T10:58:35Z",
 "data":{"site":"https://network.example",
         "user":{"wp_user_id":42,"ring_leader_id":"rl_7f3a","email":"ann@example.com","display_name":"Ann"},
         "seq":7,"state":{"status":"active","tier":"dedicated"},"previous":{"status":"active","tier":"shared"},
         "cause":{"source":"memberpress","event":"subscription-upgraded-to-recurring","mepr_event_id":1234,"membership_id":15}}}"#;

    #[test]
    fn contract_example_parses() {
        let event = parse(CONTRACT_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(event.kind, EventType::MemberTierChanged);
        assert_eq!(event.site, "https://network.example");
        let EventBody::Member { member, previous } = event.body else {
            panic!()
        };
        assert_eq!(member.user.wp_user_id, 42);
        assert_eq!(member.user.ring_leader_id.as_deref(), Some("rl_7f3a"));
        assert_eq!(member.seq, 7);
        assert_eq!(
            member.state,
            DesiredState {
                status: Status::Active,
                tier: Tier::Dedicated
            }
        );
        assert_eq!(
            previous,
            Some(DesiredState {
                status: Status::Active,
                tier: Tier::Shared
            })
        );
    }

    #[test]
    fn every_bad_field_is_named_by_its_pointer() {
        let with = |from: &str, to: &str| CONTRACT_EXAMPLE.replacen(from, to, 1);
        assert_eq!(
            pointer_of(&with(r#""tier":"dedicated""#, r#""tier":"gold""#)),
            "/data/state/tier"
        );
        assert_eq!(
            pointer_of(&with(
                r#""status":"active","tier":"dedicated""#,
                r#""status":"gone","tier":"dedicated""#
            )),
            "/data/state/status"
        );
        assert_eq!(
            pointer_of(&with(r#""wp_user_id":42"#, r#""wp_user_id":"42""#)),
            "/data/user/wp_user_id"
        );
        assert_eq!(
            pointer_of(&with(r#""wp_user_id":42"#, r#""wp_user_id":0"#)),
            "/data/user/wp_user_id"
        );
        assert_eq!(pointer_of(&with(r#""seq":7"#, r#""seq":-1"#)), "/data/seq");
        assert_eq!(
            pointer_of(&with("member.tier_changed", "member.exploded")),
            "/type"
        );
        assert_eq!(
            pointer_of(&with("2026-11-24T10:58:35Z", "yesterday")),
            "/timestamp"
        );
        assert_eq!(
            pointer_of(&with(r#""email":"ann@example.com""#, r#""email":"ann""#)),
            "/data/user/email"
        );
        assert_eq!(
            pointer_of(&with(
                r#""previous":{"status":"active","tier":"shared"}"#,
                r#""previous":{"status":"active"}"#
            )),
            "/data/previous/tier"
        );
        assert_eq!(
            pointer_of(&with("member.tier_changed", "member.deleted")),
            "/data/state/status"
        );
        assert_eq!(
            pointer_of(r#"{"type":"webhook.test","timestamp":"2026-11-24T10:58:35Z","data":{}}"#),
            "/data/site"
        );
        assert_eq!(pointer_of("[1,2]"), "");
    }

    #[test]
    fn members_sync_is_bounded_and_pointed() {
        let member = |id: u64, tier: &str| {
            format!(
                r#"{{"user":{{"wp_user_id":{id}}},"seq":1,"state":{{"status":"active","tier":"{tier}"}}}}"#
            )
        };
        let sync = |members: Vec<String>| {
            format!(
                r#"{{"type":"members.sync","timestamp":"2026-11-24T10:58:35Z","data":{{"site":"https://a","members":[{}]}}}}"#,
                members.join(",")
            )
        };
        let ok = parse(sync((1..=200).map(|i| member(i, "shared")).collect()).as_bytes()).unwrap();
        assert!(matches!(ok.body, EventBody::Sync { ref members } if members.len() == 200));
        assert_eq!(
            pointer_of(&sync((1..=201).map(|i| member(i, "shared")).collect())),
            "/data/members"
        );
        assert_eq!(
            pointer_of(&sync(vec![member(1, "shared"), member(2, "gold")])),
            "/data/members/1/state/tier"
        );
        assert_eq!(
            pointer_of(&sync(vec![member(1, "shared"), member(1, "none")])),
            "/data/members/1/user/wp_user_id"
        );
    }

    #[test]
    fn non_json_is_malformed_not_invalid() {
        assert!(matches!(
            parse(b"not json"),
            Err(Error::MalformedJson { .. })
        ));
        assert!(matches!(
            parse(br#"{"type":"#),
            Err(Error::MalformedJson { .. })
        ));
    }

    #[test]
    fn rejections_never_echo_values() {
        let body =
            CONTRACT_EXAMPLE.replacen(r#""tier":"dedicated""#, r#""tier":"SECRET-VALUE""#, 1);
        let message = parse(body.as_bytes()).unwrap_err().to_string();
        assert!(!message.contains("SECRET-VALUE"), "{message}");
    }
}

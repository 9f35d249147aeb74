//! `UserId` (validated, path-safe tenant id) and `Tier`; parsing is the only way to get either.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest accepted id, in bytes (one leading character plus at most 62 more).
const MAX_LEN: usize = 63;

/// A tenant id: ASCII `[a-z0-9][a-z0-9_-]{0,62}`.
///
/// Because of that grammar an id is always a single, non-hidden path component: it can never be `.`, `..`,
/// contain `/` or NUL, start with `-` (option injection) or hold uppercase or non-ASCII letters (which would
/// collide on case-insensitive or normalising filesystems). `FromStr` (and serde, through it) is the only
/// constructor.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

/// Why a string is not a [`UserId`]; its `Display` is one line naming the offending character and position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user id {escaped} is invalid: {reason}", escaped = escape(.input))]
pub struct InvalidUserId {
    input: String,
    reason: String,
}

impl InvalidUserId {
    /// The rejected input, verbatim.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The reason alone, without the id (e.g. "character '/' at position 1 is not allowed ...").
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl UserId {
    /// The id as a string slice; safe to use as one path component.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UserId {
    type Err = InvalidUserId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match check(s) {
            Ok(()) => Ok(UserId(s.to_owned())),
            Err(reason) => Err(InvalidUserId {
                input: s.to_owned(),
                reason,
            }),
        }
    }
}

/// The grammar check; returns the reason on failure.
fn check(s: &str) -> Result<(), String> {
    const ALLOWED: &str = "(use a-z, 0-9, '_' or '-')";
    let mut chars = s.chars().enumerate();
    let Some((_, first)) = chars.next() else {
        return Err("it is empty (use 1 to 63 characters: a-z, 0-9, '_' or '-')".to_owned());
    };
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        let what = if matches!(first, '_' | '-' | '.') {
            "is not allowed as the first character (start with a-z or 0-9)".to_owned()
        } else {
            format!("is not allowed {ALLOWED}")
        };
        return Err(format!(
            "character {} at position 0 {what}",
            escape_char(first)
        ));
    }
    for (pos, c) in chars {
        if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') {
            return Err(format!(
                "character {} at position {pos} is not allowed {ALLOWED}",
                escape_char(c)
            ));
        }
    }
    // All characters are ASCII here, so bytes == characters.
    if s.len() > MAX_LEN {
        return Err(format!(
            "it is {} characters long (at most {MAX_LEN})",
            s.len()
        ));
    }
    Ok(())
}

/// `'c'` with control and non-ASCII characters escaped (`'\n'`, `'\u{ff41}'`), so a reason stays one printable line.
fn escape_char(c: char) -> String {
    format!("'{}'", c.escape_default())
}

/// `"s"` with control and non-ASCII characters escaped.
fn escape(s: &str) -> String {
    format!("\"{}\"", s.escape_default())
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", self.0)
    }
}

impl TryFrom<String> for UserId {
    type Error = InvalidUserId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> String {
        id.0
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// How a member is hosted: in the shared multi-agent worker or in a worker of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// One agent inside the shared multi-agent worker.
    Shared,
    /// A dedicated, isolated worker gateway.
    Dedicated,
}

impl Tier {
    /// Every tier, in the order they are listed in messages.
    pub const ALL: [Tier; 2] = [Tier::Shared, Tier::Dedicated];

    /// The lowercase name used in configs, the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Shared => "shared",
            Tier::Dedicated => "dedicated",
        }
    }
}

/// A string that is not a [`Tier`]; the message lists the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tier {escaped} is invalid: use \"shared\" or \"dedicated\"", escaped = escape(.0))]
pub struct InvalidTier(String);

impl FromStr for Tier {
    type Err = InvalidTier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| InvalidTier(s.to_owned()))
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

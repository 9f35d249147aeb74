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

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids that must never parse: path tricks, case, Unicode look-alikes, control characters, length, shell tricks.
    const HOSTILE: &[&str] = &[
        "",
        ".",
        "..",
        "a/b",
        "/",
        "/etc",
        "../etc",
        "a/../b",
        "A",
        "Alice",
        "aLice",
        "ａ",
        "ａlice",
        "-x",
        "_x",
        "--help",
        "a\0b",
        "\0",
        "a b",
        " a",
        "a ",
        ".hidden",
        "é",
        "café",
        "a\n",
        "\n",
        "a\tb",
        "\t",
        "🦀",
        "a🦀",
        "a.b",
        "a:b",
        "a\\b",
        "CON",
        "NUL",
        "a*",
        "a?b",
        "$(id)",
        "a;b",
        "a|b",
        "a'b",
        "a\"b",
        "a%2fb",
        "a@b",
        "a+b",
        "ı",
        "K",         // Kelvin sign, folds to 'k'
        "a\u{200b}", // zero-width space
        "a\u{7f}",
        "\u{1b}[31m",
    ];

    #[test]
    fn hostile_ids_are_refused_with_a_one_line_reason() {
        let too_long = "a".repeat(64);
        let way_too_long = "b".repeat(300);
        let mut all: Vec<&str> = HOSTILE.to_vec();
        all.push(&too_long);
        all.push(&way_too_long);
        assert!(all.len() >= 30);
        for id in all {
            let err = id.parse::<UserId>().expect_err(id);
            let msg = err.to_string();
            assert!(
                !msg.contains('\n') && !msg.contains('\0') && !msg.contains('\t'),
                "not one printable line: {msg:?}"
            );
            assert!(msg.starts_with("user id \""), "{msg}");
            assert_eq!(err.input(), id);
            assert!(
                serde_json::from_value::<UserId>(serde_json::Value::String(id.to_owned())).is_err(),
                "{id:?}"
            );
        }
    }

    #[test]
    fn reasons_name_the_offending_character_and_position() {
        let check = |id: &str, expected: &str| {
            assert_eq!(id.parse::<UserId>().unwrap_err().to_string(), expected)
        };
        check(
            "a/b",
            "user id \"a/b\" is invalid: character '/' at position 1 is not allowed (use a-z, 0-9, '_' or '-')",
        );
        check(
            "",
            "user id \"\" is invalid: it is empty (use 1 to 63 characters: a-z, 0-9, '_' or '-')",
        );
        check(
            "-x",
            "user id \"-x\" is invalid: character '-' at position 0 is not allowed as the first character (start with a-z or 0-9)",
        );
        check(
            "a\n",
            "user id \"a\\n\" is invalid: character '\\n' at position 1 is not allowed (use a-z, 0-9, '_' or '-')",
        );
        check(
            "ａ",
            "user id \"\\u{ff41}\" is invalid: character '\\u{ff41}' at position 0 is not allowed (use a-z, 0-9, '_' or '-')",
        );
        check(
            "A",
            "user id \"A\" is invalid: character 'A' at position 0 is not allowed (use a-z, 0-9, '_' or '-')",
        );
        check(
            &"a".repeat(64),
            &format!(
                "user id \"{}\" is invalid: it is 64 characters long (at most 63)",
                "a".repeat(64)
            ),
        );
    }

    #[test]
    fn good_ids_are_accepted_and_round_trip() {
        let longest = format!("z{}", "9".repeat(62));
        for id in [
            "a",
            "0",
            "alice",
            "bob-2",
            "carol_smith",
            "a-",
            "a_",
            "9lives",
            "x-y_z",
            longest.as_str(),
        ] {
            let parsed: UserId = id.parse().unwrap();
            assert_eq!(parsed.as_str(), id);
            assert_eq!(parsed.to_string(), id);
            let json = serde_json::to_string(&parsed).unwrap();
            assert_eq!(json, format!("\"{id}\""));
            assert_eq!(serde_json::from_str::<UserId>(&json).unwrap(), parsed);
        }
    }

    #[test]
    fn tiers_parse_display_and_serialise_lowercase() {
        for (s, t) in [("shared", Tier::Shared), ("dedicated", Tier::Dedicated)] {
            assert_eq!(s.parse::<Tier>().unwrap(), t);
            assert_eq!(t.to_string(), s);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{s}\""));
            assert_eq!(
                serde_json::from_str::<Tier>(&format!("\"{s}\"")).unwrap(),
                t
            );
        }
        for bad in ["Shared", "", "premium", "dedicated "] {
            let err = bad.parse::<Tier>().unwrap_err().to_string();
            assert!(
                err.ends_with("is invalid: use \"shared\" or \"dedicated\""),
                "{err}"
            );
        }
        assert!(serde_json::from_str::<Tier>("\"gold\"").is_err());
    }
}

//! Webhook signing secrets: the `Secret` newtype (decoded `whsec_` key, redacting `Debug`) and the 0600 secrets file.
//!
//! File format (TOML, unknown keys rejected), one table per WordPress site; a site is identified by which of its secrets
//! verifies a delivery, and during a rotation it lists the old and the new secret:
//! ```toml
//! [[sites]]
//! url = "https://network.example"
//! secrets = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "whsec_…new…"]
//! ```

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::Error;

const PREFIX: &str = "whsec_";
/// Accepted key lengths after base64 decoding (the spec asks for 24–64 random bytes).
const KEY_LEN: std::ops::RangeInclusive<usize> = 24..=64;

/// One HMAC key, decoded from its `whsec_<base64>` text. Never printed, never serialised.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(whsec_…redacted)")
    }
}

impl Secret {
    /// Parses `whsec_<base64>`; the key is the decoded bytes (24–64 of them).
    pub fn parse(text: &str) -> Result<Secret, Error> {
        let Some(encoded) = text.trim().strip_prefix(PREFIX) else {
            return Err(Error::MalformedSecret {
                reason: "it must start with whsec_",
            });
        };
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| Error::MalformedSecret {
                reason: "the part after whsec_ is not valid base64",
            })?;
        if !KEY_LEN.contains(&key.len()) {
            return Err(Error::MalformedSecret {
                reason: "the decoded key must be 24 to 64 bytes",
            });
        }
        Ok(Secret { key })
    }

    /// The raw HMAC key.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }
}

/// The accepted secrets of one WordPress site.
#[derive(Debug, Clone)]
pub struct SiteSecrets {
    /// The site's URL as the plugin sends it in `data.site`.
    pub url: String,
    /// Every secret currently accepted for this site (old and new during a rotation).
    pub secrets: Vec<Secret>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    sites: Vec<SiteEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteEntry {
    url: String,
    secrets: Vec<String>,
}

/// Loads the secrets file named by `[webhooks] secrets_file`. Refuses a file accessible by group or others, a malformed
/// secret, a site without secrets, a duplicate site, or a secret shared by two sites (the site must be unambiguous).
pub fn load_secrets(path: &Path) -> Result<Vec<SiteSecrets>, Error> {
    let read_err = |source| Error::SecretsRead {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mode = file.metadata().map_err(read_err)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Error::SecretsPermissions {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_err)?;
    parse_secrets(&text, path)
}

/// Parses the secrets file text (see the module docs for the format); `path` only names the file in errors.
pub fn parse_secrets(text: &str, path: &Path) -> Result<Vec<SiteSecrets>, Error> {
    let invalid = |reason: String| Error::SecretsInvalid {
        path: path.to_owned(),
        reason,
    };
    let file: SecretsFile = toml::from_str(text).map_err(|source| Error::SecretsParse {
        path: path.to_owned(),
        source,
    })?;
    if file.sites.is_empty() {
        return Err(invalid("no [[sites]] entry".to_owned()));
    }
    let mut sites: Vec<SiteSecrets> = Vec::with_capacity(file.sites.len());
    for (i, entry) in file.sites.into_iter().enumerate() {
        let url = normalize_site(&entry.url);
        if url.is_empty() {
            return Err(invalid(format!("sites[{i}].url is empty")));
        }
        if sites.iter().any(|s| s.url == url) {
            return Err(invalid(format!("sites[{i}].url repeats an earlier site")));
        }
        if entry.secrets.is_empty() {
            return Err(invalid(format!("sites[{i}].secrets is empty")));
        }
        let mut secrets = Vec::with_capacity(entry.secrets.len());
        for (j, text) in entry.secrets.iter().enumerate() {
            let secret = Secret::parse(text)
                .map_err(|e| invalid(format!("sites[{i}].secrets[{j}]: {e}")))?;
            if sites
                .iter()
                .flat_map(|s| &s.secrets)
                .any(|other| other.key == secret.key)
            {
                return Err(invalid(format!(
                    "sites[{i}].secrets[{j}] is also a secret of another site"
                )));
            }
            secrets.push(secret);
        }
        sites.push(SiteSecrets { url, secrets });
    }
    Ok(sites)
}

/// Site URLs compare without a trailing slash, so `https://a.example/` and `https://a.example` are one site.
pub(crate) fn normalize_site(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    #[test]
    fn parses_the_contract_secret_and_redacts_it() {
        let secret = Secret::parse(VECTOR).unwrap();
        assert_eq!(secret.key().len(), 24);
        assert_eq!(format!("{secret:?}"), "Secret(whsec_…redacted)");
    }

    #[test]
    fn malformed_secrets_are_refused_with_a_reason() {
        for (text, reason) in [
            ("C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "start with whsec_"),
            ("whsec_not base64!", "not valid base64"),
            ("whsec_c2hvcnQ=", "24 to 64 bytes"),
            ("whsec_", "24 to 64 bytes"),
        ] {
            let err = Secret::parse(text).unwrap_err().to_string();
            assert!(err.contains(reason), "{text}: {err}");
            assert!(!err.contains("c2hvcnQ"), "the secret leaked into {err}");
        }
    }

    #[test]
    fn file_errors_name_the_entry() {
        let path = Path::new("/etc/wirebot/webhook-secrets.toml");
        let check = |text: &str, expected: &str| {
            let err = parse_secrets(text, path).unwrap_err();
            let message = format!(
                "{err}: {}",
                std::error::Error::source(&err)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
            assert!(message.contains(expected), "{message}");
        };
        check("sites = []", "no [[sites]] entry");
        check(
            "[[sites]]\nurl = \"https://a\"\nsecrets = []",
            "sites[0].secrets is empty",
        );
        check(
            "[[sites]]\nurl = \"https://a\"\nsecrets = [\"whsec_x\"]",
            "sites[0].secrets[0]: malformed",
        );
        check(
            "[[sites]]\nurl = \"https://a\"\nsecret = []",
            "unknown field",
        );
        let twice = format!(
            "[[sites]]\nurl = \"https://a\"\nsecrets = [\"{VECTOR}\"]\n[[sites]]\nurl = \"https://b\"\nsecrets = [\"{VECTOR}\"]"
        );
        check(
            &twice,
            "sites[1].secrets[0] is also a secret of another site",
        );
        let dup = format!(
            "[[sites]]\nurl = \"https://a/\"\nsecrets = [\"{VECTOR}\"]\n[[sites]]\nurl = \"https://a\"\nsecrets = [\"{VECTOR}\"]"
        );
        check(&dup, "sites[1].url repeats");
    }
}

//! `Secret`: a string that never shows up in `Debug` output, logs or argv (it has no `Display`).

use std::fmt;

use base64::Engine as _;

/// A secret string (gateway token, provider API key). `Debug` prints `Secret(***)`; read it with [`Secret::expose`].
/// `==` runs in time independent of where the bytes differ (only the length can leak), so comparing a presented
/// token with `==` is safe.
#[derive(Clone, Eq)]
pub struct Secret(String);

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Secret {
    /// 32 bytes from the thread CSPRNG (seeded by the OS), base64url without padding (43 characters).
    pub fn generate() -> Secret {
        let bytes: [u8; 32] = rand::random();
        Secret(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The secret itself; call only where it is written to a 0600 file or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::from("sk-live-123".to_owned());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret(***))");
        assert_eq!(s.expose(), "sk-live-123");
    }

    #[test]
    fn generated_tokens_are_32_random_bytes_base64url() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 43);
        assert!(
            a.expose()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(a.expose())
            .unwrap();
        assert_eq!(raw.len(), 32);
    }

    #[test]
    fn equality_compares_the_whole_value() {
        let s = |v: &str| Secret::from(v.to_owned());
        assert_eq!(s("abc"), s("abc"));
        assert_ne!(s("abc"), s("abd"));
        assert_ne!(s("abc"), s("ab"));
        assert_ne!(s(""), s("a"));
    }
}

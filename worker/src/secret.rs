//! `Secret`: a string that never shows up in `Debug` output, logs or error messages.

use std::fmt;

/// A credential (gateway token, provider key). `Debug` prints `Secret(***)`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The raw value, for the one place that must send it (an HTTP header, a comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time equality against untrusted input.
    pub fn matches(&self, candidate: &str) -> bool {
        use sha2::Digest;
        // Compare digests so the time taken depends on neither length nor content of the secret.
        let a = sha2::Sha256::digest(self.0.as_bytes());
        let b = sha2::Sha256::digest(candidate.as_bytes());
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
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
    fn debug_redacts_and_matches_compares() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert!(s.matches("hunter2"));
        assert!(!s.matches("hunter3"));
        assert!(!s.matches(""));
    }
}

//! `Secret`: a string that never shows up in `Debug` output, logs or argv (it has no `Display`).

use std::fmt;

use base64::Engine as _;

/// A secret string (gateway token, provider API key). `Debug` prints `Secret(***)`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

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

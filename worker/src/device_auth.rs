//! Device identity in `connect`: Ed25519 signature verification (contract §1) and the derived device token.

use base64::Engine;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::protocol::DeviceParams;

/// How far `signedAt` may be from now.
pub const MAX_SKEW_MS: i64 = 10 * 60 * 1000;

/// What the signature must cover besides the device itself.
#[derive(Debug)]
pub struct SignedFields<'a> {
    pub client_id: &'a str,
    pub client_mode: &'a str,
    pub role: &'a str,
    pub scopes: &'a [String],
    pub token: &'a str,
    pub challenge_nonce: &'a str,
    pub loopback: bool,
    pub now_ms: i64,
}

/// Verifies the device's signature; `Err` carries the message the client gets.
pub fn verify(device: &DeviceParams, f: &SignedFields<'_>) -> Result<(), &'static str> {
    let raw = public_key_raw(&device.public_key).ok_or("device public key invalid")?;
    if hex::encode(Sha256::digest(raw)) != device.id.to_ascii_lowercase() {
        return Err("device identity mismatch");
    }
    if (f.now_ms - device.signed_at).abs() > MAX_SKEW_MS {
        return Err("device signature expired");
    }
    let payload = match device.nonce.as_deref() {
        Some(n) if n != f.challenge_nonce => return Err("device nonce mismatch"),
        Some(n) => format!(
            "v2|{}|{}|{}|{}|{}|{}|{}|{}",
            device.id,
            f.client_id,
            f.client_mode,
            f.role,
            f.scopes.join(","),
            device.signed_at,
            f.token,
            n
        ),
        None if !f.loopback => return Err("device nonce required"),
        None => format!(
            "v1|{}|{}|{}|{}|{}|{}|{}",
            device.id,
            f.client_id,
            f.client_mode,
            f.role,
            f.scopes.join(","),
            device.signed_at,
            f.token
        ),
    };
    let sig = b64url(&device.signature).ok_or("device signature invalid")?;
    let sig = Signature::from_slice(&sig).map_err(|_| "device signature invalid")?;
    let key = VerifyingKey::from_bytes(&raw).map_err(|_| "device public key invalid")?;
    key.verify_strict(payload.as_bytes(), &sig)
        .map_err(|_| "device signature invalid")
}

/// The token a verified device may use instead of the gateway token: HMAC-SHA256(secret, deviceId|role), hex.
/// Derived, so nothing is stored and it survives restarts while the gateway secret stays the same.
pub fn device_token(secret: &str, device_id: &str, role: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| {
            <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(b"wirebot")
                .unwrap_or_else(|_| unreachable!("HMAC takes any key"))
        });
    mac.update(device_id.to_ascii_lowercase().as_bytes());
    mac.update(b"|");
    mac.update(role.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn public_key_raw(s: &str) -> Option<[u8; 32]> {
    if s.contains("BEGIN PUBLIC KEY") {
        return VerifyingKey::from_public_key_pem(s)
            .ok()
            .map(|k| k.to_bytes());
    }
    b64url(s)?.try_into().ok()
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    let t = s
        .trim()
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn enc(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    fn signed(nonce: Option<&str>, signed_at: i64) -> (DeviceParams, SigningKey) {
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let pk = sk.verifying_key().to_bytes();
        let id = hex::encode(Sha256::digest(pk));
        let payload = match nonce {
            Some(n) => format!("v2|{id}|cli|cli|operator|operator.admin|{signed_at}|tok|{n}"),
            None => format!("v1|{id}|cli|cli|operator|operator.admin|{signed_at}|tok"),
        };
        let sig = sk.sign(payload.as_bytes());
        (
            DeviceParams {
                id,
                public_key: enc(&pk),
                signature: enc(&sig.to_bytes()),
                signed_at,
                nonce: nonce.map(str::to_string),
            },
            sk,
        )
    }

    fn fields(loopback: bool) -> SignedFields<'static> {
        static SCOPES: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["operator.admin".to_string()]);
        SignedFields {
            client_id: "cli",
            client_mode: "cli",
            role: "operator",
            scopes: &SCOPES,
            token: "tok",
            challenge_nonce: "n1",
            loopback,
            now_ms: 1_000_000,
        }
    }

    #[test]
    fn verifies_v2_and_v1_on_loopback() {
        assert_eq!(
            verify(&signed(Some("n1"), 1_000_000).0, &fields(false)),
            Ok(())
        );
        assert_eq!(verify(&signed(None, 1_000_000).0, &fields(true)), Ok(()));
        assert_eq!(
            verify(&signed(None, 1_000_000).0, &fields(false)),
            Err("device nonce required")
        );
    }

    #[test]
    fn rejects_tampering() {
        let (mut d, _) = signed(Some("n1"), 1_000_000);
        d.signed_at += 1;
        assert_eq!(verify(&d, &fields(true)), Err("device signature invalid"));
        assert_eq!(
            verify(&signed(Some("n2"), 1_000_000).0, &fields(true)),
            Err("device nonce mismatch")
        );
        assert_eq!(
            verify(
                &signed(Some("n1"), 1_000_000 - MAX_SKEW_MS - 1).0,
                &fields(true)
            ),
            Err("device signature expired")
        );
        let (mut d, _) = signed(Some("n1"), 1_000_000);
        d.id = "00".repeat(32);
        assert_eq!(verify(&d, &fields(true)), Err("device identity mismatch"));
    }

    #[test]
    fn device_token_is_stable_and_keyed() {
        assert_eq!(
            device_token("s", "ab", "operator"),
            device_token("s", "AB", "operator")
        );
        assert_ne!(
            device_token("s", "ab", "operator"),
            device_token("t", "ab", "operator")
        );
    }
}

//! Standard Webhooks v1 (HMAC-SHA256 over `id.timestamp.body`): sign, verify against a rotation list, and the ±300 s
//! timestamp window. Written here rather than taken from a crate so the tolerance, rotation and errors are ours.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq;

use super::{Error, Secret, SiteSecrets};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Accepted distance between `webhook-timestamp` and now, both ways (every official library uses 5 minutes).
pub const TOLERANCE_SECS: i64 = 300;
const MAX_ID_LEN: usize = 256;

fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this branch cannot be taken; keep the function total anyway.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The `webhook-signature` entry for one secret: `v1,<base64>`.
pub fn sign(secret: &Secret, id: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "v1,{}",
        STANDARD.encode(mac(secret.key(), id, &timestamp.to_string(), body))
    )
}

/// Checks the three headers against every accepted secret of every site and returns the site whose secret matched.
/// Any `v1,` entry of the space-separated list may match; other versions and empty entries are ignored.
pub fn verify<'a>(
    sites: &'a [SiteSecrets],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
) -> Result<&'a SiteSecrets, Error> {
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id.bytes().all(|b| b.is_ascii_graphic() && b != b'.')
    {
        return Err(Error::InvalidSignature {
            reason: "webhook-id must be 1-256 visible ASCII characters without '.'",
        });
    }
    if timestamp.is_empty()
        || timestamp.len() > 12
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(Error::InvalidSignature {
            reason: "webhook-timestamp must be integer unix seconds",
        });
    }
    let candidates: Vec<Vec<u8>> = signatures
        .split_ascii_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .filter(|raw| raw.len() == 32)
        .collect();
    if candidates.is_empty() {
        return Err(Error::InvalidSignature {
            reason: "no v1 signature in webhook-signature",
        });
    }
    for site in sites {
        for secret in &site.secrets {
            let expected = mac(secret.key(), id, timestamp, body);
            if candidates
                .iter()
                .any(|c| bool::from(c.as_slice().ct_eq(&expected)))
            {
                return Ok(site);
            }
        }
    }
    Err(Error::InvalidSignature {
        reason: "no signature matches an accepted secret",
    })
}

/// Rejects a timestamp more than `TOLERANCE_SECS` away from `now` (replays of old deliveries, skewed clocks).
pub fn check_window(timestamp: i64, now: i64) -> Result<(), Error> {
    let skew = now.saturating_sub(timestamp);
    if skew.saturating_abs() > TOLERANCE_SECS {
        return Err(Error::TimestampOutOfWindow {
            skew_secs: skew,
            tolerance_secs: TOLERANCE_SECS,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn site(secrets: &[&str]) -> Vec<SiteSecrets> {
        vec![SiteSecrets {
            url: "https://network.example".into(),
            secrets: secrets.iter().map(|s| Secret::parse(s).unwrap()).collect(),
        }]
    }

    #[test]
    fn contract_test_vector_signs_and_verifies() {
        assert_eq!(
            sign(&Secret::parse(SECRET).unwrap(), ID, TS, BODY),
            SIGNATURE
        );
        let sites = site(&[SECRET]);
        assert_eq!(
            verify(&sites, ID, &TS.to_string(), SIGNATURE, BODY)
                .unwrap()
                .url,
            "https://network.example"
        );
    }

    #[test]
    fn any_listed_v1_signature_may_match_and_any_secret_may_verify() {
        let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let list = format!(
            "v2,abc v1,{} {SIGNATURE}",
            &SIGNATURE[3..SIGNATURE.len() - 4]
        );
        assert!(verify(&site(&[SECRET]), ID, "1649367553", &list, BODY).is_ok());
        assert!(verify(&site(&[other, SECRET]), ID, "1649367553", SIGNATURE, BODY).is_ok());
        assert!(verify(&site(&[other]), ID, "1649367553", SIGNATURE, BODY).is_err());
    }

    #[test]
    fn tampering_and_empty_signatures_are_rejected() {
        let sites = site(&[SECRET]);
        let reason = |r: Result<&SiteSecrets, Error>| match r {
            Err(Error::InvalidSignature { reason }) => reason,
            other => panic!("expected InvalidSignature, got {other:?}"),
        };
        assert_eq!(
            reason(verify(&sites, ID, "1649367554", SIGNATURE, BODY)),
            "no signature matches an accepted secret"
        );
        assert_eq!(
            reason(verify(&sites, "msg_other", "1649367553", SIGNATURE, BODY)),
            "no signature matches an accepted secret"
        );
        assert_eq!(
            reason(verify(&sites, ID, "1649367553", SIGNATURE, b"{}")),
            "no signature matches an accepted secret"
        );
        assert_eq!(
            reason(verify(&sites, ID, "1649367553", "v1,", BODY)),
            "no v1 signature in webhook-signature"
        );
        assert_eq!(
            reason(verify(&sites, ID, "1649367553", "", BODY)),
            "no v1 signature in webhook-signature"
        );
        assert!(
            reason(verify(&sites, "a.b", "1649367553", SIGNATURE, BODY)).contains("without '.'")
        );
        assert!(reason(verify(&sites, ID, "-5", SIGNATURE, BODY)).contains("unix seconds"));
    }

    #[test]
    fn window_is_plus_minus_five_minutes() {
        assert!(check_window(1000, 1300).is_ok());
        assert!(check_window(1300, 1000).is_ok());
        match check_window(1000, 1301) {
            Err(Error::TimestampOutOfWindow {
                skew_secs: 301,
                tolerance_secs: 300,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(check_window(1301, 1000).is_err());
    }
}

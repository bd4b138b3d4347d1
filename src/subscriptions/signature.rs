//! Standard Webhooks signatures: `webhook-id`, `webhook-timestamp` and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one entry per secret, space-separated,
//! so a receiver holding either the old or the new secret accepts a delivery during a
//! rotation).
//!
//! Written on `hmac` and `sha2` (already warren's dependencies) rather than the
//! `standardwebhooks` crate: that crate (1.0.1, MIT) signs with one secret per `Webhook`
//! value, refuses bodies that are not UTF-8, and would add `base64` 0.21, `hmac-sha256` and
//! `time` to the tree for about twenty lines of HMAC. Its reference behaviour is checked
//! instead: the unit test below uses the test vector of the Standard Webhooks reference
//! implementation, and `tests/wire/check_delivery.py` verifies real deliveries with the Python
//! reference library.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header: the message id (`ce-id`, the same on every attempt).
pub(crate) const WEBHOOK_ID: &str = "webhook-id";
/// Header: when this attempt was signed, seconds since the epoch.
pub(crate) const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// Header: the signatures.
pub(crate) const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// The HMAC keys a subscription signs with (decoded `whsec_` secrets). `Debug` hides them.
#[derive(Clone, Default)]
pub(crate) struct SigningKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKeys({} key(s), [redacted])", self.0.len())
    }
}

impl SigningKeys {
    /// Keys from decoded secrets (see [`crate::config::decode_whsec`]).
    pub(crate) fn new(keys: Vec<Vec<u8>>) -> Self {
        Self(keys)
    }

    /// The `webhook-signature` value for `id`, `timestamp` and `body`: `v1,<sig>` per key,
    /// space-separated; `None` without keys.
    pub(crate) fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let prefix = format!("{id}.{timestamp}.");
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|key| {
                // HMAC takes a key of any length; new_from_slice cannot fail for it.
                let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
                    Ok(m) => m,
                    Err(_) => return String::new(),
                };
                mac.update(prefix.as_bytes());
                mac.update(body);
                let sig =
                    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                format!("v1,{sig}")
            })
            .filter(|s| !s.is_empty())
            .collect();
        Some(parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::decode_whsec;

    // The test vector of the Standard Webhooks reference implementation (`test_sign` of its
    // Rust crate, standardwebhooks 1.0.1): secret, message id, timestamp, payload, signature.
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TIMESTAMP: i64 = 1_649_367_553;
    const PAYLOAD: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    #[test]
    fn signs_the_reference_vector() {
        let keys = SigningKeys::new(vec![decode_whsec(SECRET).expect("valid secret")]);
        assert_eq!(
            keys.sign(ID, TIMESTAMP, PAYLOAD).as_deref(),
            Some(SIGNATURE)
        );
    }

    #[test]
    fn one_signature_per_secret_space_separated() {
        let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"; // 24 bytes
        let keys = SigningKeys::new(vec![
            decode_whsec(other).expect("valid"),
            decode_whsec(SECRET).expect("valid"),
        ]);
        let header = keys.sign(ID, TIMESTAMP, PAYLOAD).expect("signed");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2, "{header}");
        assert!(parts[0].starts_with("v1,") && parts[0] != SIGNATURE);
        assert_eq!(parts[1], SIGNATURE);
    }

    #[test]
    fn a_changed_body_id_or_timestamp_changes_the_signature() {
        let keys = SigningKeys::new(vec![decode_whsec(SECRET).expect("valid")]);
        let base = keys.sign(ID, TIMESTAMP, PAYLOAD);
        assert_ne!(keys.sign(ID, TIMESTAMP, b"{}"), base);
        assert_ne!(keys.sign("msg_other", TIMESTAMP, PAYLOAD), base);
        assert_ne!(keys.sign(ID, TIMESTAMP + 1, PAYLOAD), base);
    }

    #[test]
    fn no_keys_no_signature_and_keys_never_print() {
        assert_eq!(SigningKeys::default().sign(ID, TIMESTAMP, PAYLOAD), None);
        let keys = SigningKeys::new(vec![decode_whsec(SECRET).expect("valid")]);
        assert!(!format!("{keys:?}").contains("C2FV"));
    }

    #[test]
    fn secrets_are_checked_when_decoded() {
        assert!(
            decode_whsec("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_err(),
            "no prefix"
        );
        assert!(decode_whsec("whsec_not base64!").is_err());
        assert!(
            decode_whsec("whsec_c2hvcnQ=").is_err(),
            "5 bytes is too short"
        );
        // Padded or not, like the reference libraries (25 bytes: 1 to 25).
        let want: Vec<u8> = (1..=25).collect();
        let padded = decode_whsec("whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGQ==");
        assert_eq!(padded.as_ref(), Ok(&want));
        let unpadded = decode_whsec("whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGQ");
        assert_eq!(unpadded.as_ref(), Ok(&want));
    }
}

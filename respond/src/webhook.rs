//! Standard Webhooks 1.0: what a gateway receives. The payload of a transition, its `webhook-id`
//! (stable across retries, so receivers dedupe), and the signature over `id.timestamp.body`.
//! The sender (I/O, retries, the outbox) is in the binary; what is signed, and how, is here.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use vigil_schemas::rows::Transition;
use vigil_schemas::timestamp::format_rfc3339_ms;

/// A webhook secret that is not `whsec_` followed by base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret is \"whsec_\" followed by base64 (at least 16 bytes): {0}")]
pub struct SecretError(pub &'static str);

/// A signing secret (the bytes behind `whsec_…`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let b64 = text.trim().strip_prefix("whsec_").ok_or(SecretError("the prefix is missing"))?;
        let bytes = STANDARD.decode(b64).map_err(|_| SecretError("not base64"))?;
        if bytes.len() < 16 {
            return Err(SecretError("too short"));
        }
        Ok(Secret(bytes))
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp_s: i64, body: &[u8]) -> String {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_s.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-id` of a transition: the same on every attempt and every member.
pub fn webhook_id(t: &Transition) -> String {
    format!("msg_{}", t.transition_id)
}

/// The body sent for a transition: `{"type", "timestamp", "data"}`.
pub fn payload(t: &Transition) -> Vec<u8> {
    let body = json!({
        "type": t.action.as_str(),
        "timestamp": format_rfc3339_ms(t.ts),
        "data": t,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector the Standard Webhooks specification's libraries share.
    #[test]
    fn signature_matches_the_specification_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn bad_secrets_are_refused_with_the_reason() {
        assert_eq!(Secret::parse("MfKQ9r8GKYqrTwjU").unwrap_err().0, "the prefix is missing");
        assert_eq!(Secret::parse("whsec_!!!").unwrap_err().0, "not base64");
        assert_eq!(Secret::parse("whsec_AAAA").unwrap_err().0, "too short");
        assert!(
            !format!("{:?}", Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()).contains("Mf")
        );
    }
}

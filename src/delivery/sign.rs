//! Request signing: `X-Flagr-Signature` (hex HMAC-SHA256 of the body) and the Standard Webhooks
//! headers `webhook-id`, `webhook-timestamp`, `webhook-signature`.
//!
//! In: secrets, the message id, the attempt's timestamp, the exact body bytes sent.
//! Out: header values. Never: logs a secret, or signs anything but the bytes on the wire.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The key bytes of a secret. Standard Webhooks secrets (`whsec_<base64>`) are decoded; any other
/// secret is used as its UTF-8 bytes, which is what Flagr's seed describes.
pub fn key_bytes(secret: &str) -> Vec<u8> {
    if let Some(b64) = secret.strip_prefix("whsec_") {
        if let Ok(k) = base64::engine::general_purpose::STANDARD.decode(b64) {
            return k;
        }
    }
    secret.as_bytes().to_vec()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// `X-Flagr-Signature`: lowercase hex HMAC-SHA256 of the raw body.
pub fn flagr_signature(secret: &str, body: &[u8]) -> String {
    hex::encode(hmac(&key_bytes(secret), &[body]))
}

/// `webhook-signature`: `v1,<base64>` per secret, space-separated, over `id.timestamp.body`.
pub fn standard_signature(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    secrets
        .iter()
        .map(|s| {
            let sig = hmac(
                &key_bytes(s),
                &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
            );
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(sig)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a hex HMAC-SHA256 of `body` under `key` in constant time (forges sign this way).
pub fn verify_hex(key: &[u8], body: &[u8], received_hex: &str) -> bool {
    let Ok(received) = hex::decode(received_hex.trim()) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&received).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2.
        let sig = flagr_signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_hex(b"Jefe", b"what do ya want for nothing?", &sig));
        assert!(!verify_hex(b"jefe", b"what do ya want for nothing?", &sig));
        assert!(!verify_hex(b"Jefe", b"what do ya want for nothing?", "zz"));
    }

    #[test]
    fn standard_webhooks_vector() {
        // The example from the Standard Webhooks specification.
        let s = standard_signature(
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(s, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let two = standard_signature(&["a", "b"], "id", 1, b"x");
        assert_eq!(two.split(' ').count(), 2);
    }
}

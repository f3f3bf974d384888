//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>, symmetric `v1`).
//!
//! A signature is `v1,` followed by the base64 HMAC-SHA256 of
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64-decoded
//! secret. While a secret rotates, a subscription has several secrets and the
//! `webhook-signature` header carries one signature per secret, separated by
//! spaces, so receivers that know either secret accept the request.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

/// Prefix that Standard Webhooks secrets carry before their base64 text.
pub const SECRET_PREFIX: &str = "whsec_";

/// Errors of parsing a signing secret; no message contains the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningError {
    #[error("signing secret is empty: set a secret of the form `whsec_<base64>`")]
    Empty,
    #[error(
        "signing secret number {position} is not valid base64 after the optional `whsec_` \
         prefix: set a secret of the form `whsec_<base64>`"
    )]
    InvalidBase64 {
        /// 1-based position of the secret among the space-separated secrets.
        position: usize,
    },
}

/// An HMAC-SHA256 key decoded from a `whsec_` secret; `Debug` prints no key bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Parses one secret: an optional `whsec_` prefix, then standard base64.
    pub fn parse(secret: &str) -> Result<SigningKey, SigningError> {
        decode_key(secret, 1)
    }

    /// Computes the base64 signature of `{webhook_id}.{timestamp_secs}.{body}`.
    pub fn sign(&self, webhook_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_secs.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        BASE64.encode(mac.finalize().into_bytes())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// Parses a secret text that contains one or more space-separated secrets, as
/// during a rotation.
pub fn parse_secrets(secret: &Secret) -> Result<Vec<SigningKey>, SigningError> {
    let keys = secret
        .expose()
        .split_whitespace()
        .enumerate()
        .map(|(index, part)| decode_key(part, index + 1))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(SigningError::Empty);
    }
    Ok(keys)
}

/// Builds the `webhook-signature` header value: `v1,<signature>` per key,
/// separated by spaces. Returns an empty string when `keys` is empty.
pub fn signature_header(
    keys: &[SigningKey],
    webhook_id: &str,
    timestamp_secs: i64,
    body: &[u8],
) -> String {
    keys.iter()
        .map(|key| format!("v1,{}", key.sign(webhook_id, timestamp_secs, body)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn decode_key(secret: &str, position: usize) -> Result<SigningKey, SigningError> {
    let encoded = secret.trim();
    let encoded = encoded.strip_prefix(SECRET_PREFIX).unwrap_or(encoded);
    if encoded.is_empty() {
        return Err(SigningError::Empty);
    }

    // The decoder's own error names the offending byte, which is part of the
    // secret, so only the position of the secret is reported.
    let bytes = BASE64
        .decode(encoded)
        .map_err(|_| SigningError::InvalidBase64 { position })?;
    if bytes.is_empty() {
        return Err(SigningError::Empty);
    }
    Ok(SigningKey(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test vector of the Standard Webhooks reference libraries
    // (libraries/javascript/src/webhook.test.ts, "sign function works").
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1614265330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn spec_vector_matches() {
        let key = SigningKey::parse(SPEC_SECRET).expect("spec secret is valid");
        let header = signature_header(&[key], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes());
        assert_eq!(header, SPEC_SIGNATURE);
    }

    #[test]
    fn prefix_is_optional() {
        let with_prefix = SigningKey::parse(SPEC_SECRET).expect("valid with prefix");
        let without_prefix =
            SigningKey::parse(&SPEC_SECRET[SECRET_PREFIX.len()..]).expect("valid without prefix");
        assert_eq!(with_prefix, without_prefix);
    }

    #[test]
    fn rotation_signs_with_every_key() {
        let other = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=";
        let secret = Secret::new(format!("{SPEC_SECRET}  {other}"));
        let keys = parse_secrets(&secret).expect("both secrets are valid");
        assert_eq!(keys.len(), 2, "one key per space-separated secret");

        let header = signature_header(&keys, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes());
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2, "one signature per key in `{header}`");
        assert_eq!(parts[0], SPEC_SIGNATURE, "first key signs first");
        assert!(
            parts[1].starts_with("v1,"),
            "second signature is v1: `{}`",
            parts[1]
        );
        assert_ne!(
            parts[0], parts[1],
            "different keys give different signatures"
        );
    }

    #[test]
    fn invalid_base64_hides_secret() {
        let secret = Secret::new(format!("{SPEC_SECRET} whsec_not*base64!"));
        let err = parse_secrets(&secret).expect_err("second secret is invalid");
        assert_eq!(err, SigningError::InvalidBase64 { position: 2 });
        let message = err.to_string();
        assert!(
            !message.contains("not*base64"),
            "message leaks the secret: {message}"
        );
    }

    #[test]
    fn empty_secret_is_rejected() {
        assert_eq!(
            parse_secrets(&Secret::new("  ".into())),
            Err(SigningError::Empty)
        );
        assert_eq!(SigningKey::parse("whsec_"), Err(SigningError::Empty));
    }

    #[test]
    fn debug_hides_key() {
        let key = SigningKey::parse(SPEC_SECRET).expect("spec secret is valid");
        assert_eq!(format!("{key:?}"), "SigningKey(***)");
    }
}

//! A webhook's Standard Webhooks signing key (`whsec_<base64>`), as the config reads it
//! and delivery signs with it.

use base64::Engine;
use ring::hmac;

/// A webhook's signing key, from a `whsec_<base64>` secret.
#[derive(Clone)]
pub(crate) struct Signer {
    key: hmac::Key,
    /// Digest of the key, to tell whether a reload changed it.
    fingerprint: [u8; 32],
}

impl PartialEq for Signer {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

/// Decodes a `whsec_…` secret into its key bytes (24 to 64 bytes, as Standard Webhooks says;
/// at least 16 accepted).
pub(crate) fn parse_secret(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret
        .strip_prefix("whsec_")
        .ok_or_else(|| "a signing secret starts with \"whsec_\" followed by base64".to_string())?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| "the part after \"whsec_\" is not valid base64".to_string())?;
    if !(16..=64).contains(&key.len()) {
        return Err(format!(
            "the key is {} bytes; use 24 to 64 random bytes",
            key.len()
        ));
    }
    Ok(key)
}

impl Signer {
    /// A signer for decoded key bytes.
    pub(crate) fn new(key: &[u8]) -> Self {
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, key).as_ref());
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            fingerprint,
        }
    }

    /// `v1,<base64 signature>` of one attempt.
    pub(crate) fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        let tag = ctx.sign();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
        )
    }
}

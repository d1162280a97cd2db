//! The fleet document's Ed25519 signature (ring): `roomhook fleet keygen` (a private key
//! file, base64 PKCS#8, and the public key for `[fleet] config_public_key`), `roomhook
//! fleet sign` (a detached signature, base64, in `DOC.sig`), and the gateway's check of it.

use crate::files::with_suffix;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes a new private key to `out` (mode 0600, never over an existing file) and its
/// public key to `out.pub`; returns the public key (base64).
pub fn keygen(out: &Path) -> Result<String, String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
    let public = STANDARD.encode(pair.public_key().as_ref());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    writeln!(f, "{}", STANDARD.encode(pkcs8.as_ref()))
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let public_file = with_suffix(out, ".pub");
    std::fs::write(&public_file, format!("{public}\n"))
        .map_err(|e| format!("{}: {e}", public_file.display()))?;
    Ok(public)
}

/// Signs the file `doc` with the private key in `key`; writes the signature to `DOC.sig`
/// and returns that path.
pub fn sign(key: &Path, doc: &Path) -> Result<PathBuf, String> {
    let text = crate::config::secret::read_secret_file(key)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let pkcs8 = STANDARD.decode(text.expose()).map_err(|_| {
        format!(
            "{}: not a key written by `roomhook fleet keygen`",
            key.display()
        )
    })?;
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
        .map_err(|_| format!("{}: not an Ed25519 private key", key.display()))?;
    let body = std::fs::read(doc).map_err(|e| format!("{}: {e}", doc.display()))?;
    let sig = with_suffix(doc, ".sig");
    std::fs::write(&sig, format!("{}\n", STANDARD.encode(pair.sign(&body))))
        .map_err(|e| format!("{}: {e}", sig.display()))?;
    Ok(sig)
}

/// Whether `signature` (base64) is `public`'s signature of `body` (the config's own check,
/// which the kept document's load needs too).
pub(crate) use crate::config::fleet::verify_signature as verify;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_document_verifies_and_a_changed_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("fleet.key");
        let public = keygen(&key).unwrap();
        assert!(keygen(&key).is_err(), "never over an existing key");
        let public: [u8; 32] = STANDARD.decode(public).unwrap().try_into().unwrap();
        let doc = dir.path().join("gw.toml");
        std::fs::write(&doc, "webhooks = []\n").unwrap();
        let sig = std::fs::read_to_string(sign(&key, &doc).unwrap()).unwrap();
        assert!(verify(&public, b"webhooks = []\n", &sig));
        assert!(!verify(&public, b"webhooks = [] \n", &sig));
        assert!(!verify(&public, b"webhooks = []\n", "AAAA"));
    }
}

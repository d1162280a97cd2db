//! Secrets (passwords, tokens): read from the config or a file, never printed.

use std::fmt;

/// A secret value. `Debug` and `Display` print `***`; only [`Secret::expose`] gives the text.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret text, for the one place that must send it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

pub(crate) use crate::files::MAX_SECRET_FILE;

/// Where a secret file named `p` in a config whose directory is `base` is: a relative path
/// is looked up first in systemd's `$CREDENTIALS_DIRECTORY` (`LoadCredential=`), then
/// relative to `base`.
pub(crate) fn secret_path(base: &std::path::Path, p: &std::path::Path) -> std::path::PathBuf {
    if p.is_relative() {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let cred = std::path::Path::new(&dir).join(p);
            if cred.exists() {
                return cred;
            }
        }
    }
    base.join(p)
}

pub(crate) use crate::files::check_regular_file;

/// Reads a secret file (a regular file of at most 64 KiB); surrounding whitespace (a
/// trailing newline) is trimmed.
pub(crate) fn read_secret_file(path: &std::path::Path) -> std::io::Result<Secret> {
    check_regular_file(path, MAX_SECRET_FILE)?;
    let text = std::fs::read_to_string(path)?;
    let secret = text.trim();
    if secret.contains(['\n', '\r']) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "more than one line: a secret file holds the secret alone",
        ));
    }
    Ok(Secret::new(secret))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 70 * 1024]).unwrap();
        assert!(super::read_secret_file(&big).is_err());
        assert!(super::read_secret_file(std::path::Path::new("/dev/zero")).is_err());
        assert!(super::read_secret_file(dir.path()).is_err());
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "s3cret\n").unwrap();
        assert_eq!(super::read_secret_file(&ok).unwrap().expose(), "s3cret");
    }

    #[test]
    fn never_prints_the_value() {
        let s = super::Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }
}

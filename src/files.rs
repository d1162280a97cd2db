//! Files the config names (secrets, keys, certificates): regular files only, bounded in
//! size. A utility: imports nothing of the pipeline.

/// Largest secret file read (also private keys).
pub(crate) const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Checks that `path` is a regular file of at most `max` bytes (never a device, a FIFO or a
/// directory, which could block or feed endless data).
pub(crate) fn check_regular_file(path: &std::path::Path, max: u64) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (devices, FIFOs and directories are refused)",
        ));
    }
    if meta.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} bytes, more than the {max} a file here may have",
                meta.len()
            ),
        ));
    }
    Ok(())
}

/// `p` with `suffix` appended to its name (`doc.toml` → `doc.toml.sig`).
pub(crate) fn with_suffix(p: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    std::path::PathBuf::from(s)
}

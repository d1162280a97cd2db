//! Secrets inside URLs, hidden wherever a URL is shown (`list`, `show`, `status`,
//! `check-config`, logs): user-info and query values become `***`
//! (`https://***@host/path?token=***`). What roomhook sends is never changed.

/// The URL with its user-info and query values replaced by `***`. Text that is not a URL
/// is shown only up to its first `@` or `?` (whatever follows may be a secret).
pub fn url(raw: &str) -> String {
    let Ok(mut u) = url::Url::parse(raw) else {
        let cut = raw.find(['@', '?']).unwrap_or(raw.len());
        return if cut < raw.len() {
            format!("{}***", &raw[..cut])
        } else {
            raw.to_string()
        };
    };
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_password(None);
        let _ = u.set_username("***");
    }
    if u.query().is_some() {
        let pairs: Vec<String> = u.query_pairs().map(|(k, _)| format!("{k}=***")).collect();
        u.set_query(Some(&pairs.join("&")));
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_and_query_values_are_hidden() {
        assert_eq!(
            url("https://bob:hunter2@hooks.example.com/rooms?token=abc&site=oslo"),
            "https://***@hooks.example.com/rooms?token=***&site=***"
        );
        assert_eq!(
            url("mqtt://roomhook:pw@10.0.0.2:1883"),
            "mqtt://***@10.0.0.2:1883"
        );
        assert_eq!(
            url("https://hooks.example.com/rooms"),
            "https://hooks.example.com/rooms"
        );
        assert_eq!(url("not a url pw@x"), "not a url pw***");
    }
}

/// `text` as one printable line: every control character (newlines, escapes, NUL) becomes
/// a space. For peer-supplied text on its way to status, logs and `STATUS=` of sd_notify,
/// where a newline would start a line of its own (`WATCHDOG=trigger`, a forged log line).
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod printable_tests {
    #[test]
    fn control_characters_become_spaces() {
        assert_eq!(
            super::printable("bad\nWATCHDOG=trigger\r\u{1b}[31m\0x"),
            "bad WATCHDOG=trigger  [31m x"
        );
        assert_eq!(super::printable("Zürich 22 °C"), "Zürich 22 °C");
    }
}

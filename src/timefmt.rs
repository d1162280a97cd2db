//! Wall-clock helpers: unix milliseconds now, and the RFC 3339 form Control Hub payloads use
//! (`2026-11-27T10:15:30.123Z`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A duration for people, as the config writes it: `50ms`, `1500ms`, `45s`, `12m`, `5h`, `7d`.
pub(crate) fn human_duration(d: std::time::Duration) -> String {
    if d.subsec_millis() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        _ if s % 86_400 == 0 => format!("{}d", s / 86_400),
        _ if s % 3600 == 0 => format!("{}h", s / 3600),
        _ if s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds (`2026-11-27T10:15:30.123Z`).
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_with_milliseconds_and_z() {
        assert_eq!(
            super::rfc3339_ms(1_764_238_530_123),
            "2025-11-27T10:15:30.123Z"
        );
        assert_eq!(super::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn durations_as_the_config_writes_them() {
        use std::time::Duration;
        let h = super::human_duration;
        assert_eq!(h(Duration::ZERO), "0ms");
        assert_eq!(h(Duration::from_millis(50)), "50ms");
        assert_eq!(h(Duration::from_millis(1500)), "1500ms");
        assert_eq!(h(Duration::from_secs(45)), "45s");
        assert_eq!(h(Duration::from_secs(60)), "1m");
        assert_eq!(h(Duration::from_secs(7 * 86_400)), "7d");
    }
}

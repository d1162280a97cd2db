//! The console's per-webhook chart: delivered events and failed requests per minute over
//! the last hour, drawn by the server as a small SVG (no chart library in the page).

use std::fmt::Write;

/// Minutes the chart shows.
pub(crate) const MINUTES: usize = 60;
const WIDTH: u32 = 360;
const HEIGHT: u32 = 90;
const TOP: u32 = 14;
const BOTTOM: u32 = 14;

/// The SVG of `minutes` ((delivered, errors), oldest first, the current minute last).
pub(crate) fn svg(name: &str, minutes: &[(u32, u32)]) -> String {
    let peak = minutes
        .iter()
        .map(|&(d, e)| d.max(e))
        .max()
        .unwrap_or(0)
        .max(1);
    let plot = f64::from(HEIGHT - TOP - BOTTOM);
    let n = minutes.len().max(1) as f64;
    let step = f64::from(WIDTH) / n;
    let y = |v: u32| f64::from(TOP) + plot - plot * f64::from(v) / f64::from(peak);
    let (delivered, errors): (u64, u64) = minutes.iter().fold((0, 0), |(a, b), &(d, e)| {
        (a + u64::from(d), b + u64::from(e))
    });
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-labelledby="t"><title id="t">{}: {delivered} delivered and {errors} failed requests in the last hour, per minute (peak {peak})</title><rect width="100%" height="100%" fill="#fff"/>"##,
        super::html_escape(name)
    );
    // Delivered: bars; errors: a red line over them.
    for (i, &(d, _)) in minutes.iter().enumerate() {
        if d == 0 {
            continue;
        }
        let top = y(d);
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="#3a7ca5"/>"##,
            i as f64 * step + 0.5,
            (step - 1.0).max(0.5),
            f64::from(TOP) + plot - top
        );
    }
    if errors > 0 {
        let points: Vec<String> = minutes
            .iter()
            .enumerate()
            .map(|(i, &(_, e))| format!("{:.1},{:.1}", (i as f64 + 0.5) * step, y(e)))
            .collect();
        let _ = write!(
            out,
            r##"<polyline points="{}" fill="none" stroke="#c0392b" stroke-width="1.5"/>"##,
            points.join(" ")
        );
    }
    let base = HEIGHT - BOTTOM;
    let _ = write!(
        out,
        r##"<line x1="0" y1="{base}" x2="{WIDTH}" y2="{base}" stroke="#999"/><text x="2" y="10" font-size="10" font-family="sans-serif" fill="#333">{peak}/min</text><text x="2" y="{}" font-size="10" font-family="sans-serif" fill="#333">−60 min</text><text x="{}" y="{}" font-size="10" font-family="sans-serif" fill="#333" text-anchor="end">now · <tspan fill="#3a7ca5">■ delivered {delivered}</tspan> <tspan fill="#c0392b">— errors {errors}</tspan></text></svg>"##,
        HEIGHT - 2,
        WIDTH - 2,
        HEIGHT - 2
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_for_delivered_a_line_for_errors_and_totals_in_the_title() {
        let mut m = vec![(0, 0); MINUTES];
        m[10] = (30, 0);
        m[59] = (60, 3);
        let s = svg("bi <eu>", &m);
        assert!(s.starts_with("<svg"), "{s}");
        assert!(s.ends_with("</svg>"));
        assert!(s.contains("bi &lt;eu&gt;: 90 delivered and 3 failed requests"));
        assert_eq!(s.matches("<rect x=").count(), 2, "one bar per busy minute");
        assert!(s.contains("<polyline"));
        // The tallest bar reaches the top of the plot, the half-height one half way.
        assert!(s.contains(&format!(r#"y="{:.1}""#, f64::from(TOP))), "{s}");
        let plot = f64::from(HEIGHT - TOP - BOTTOM);
        assert!(s.contains(&format!(r#"y="{:.1}""#, f64::from(TOP) + plot / 2.0)));
    }

    #[test]
    fn a_quiet_hour_is_an_empty_chart() {
        let s = svg("x", &[(0, 0); MINUTES]);
        assert!(!s.contains("<rect x="));
        assert!(!s.contains("<polyline"));
        assert!(s.contains("0 delivered and 0 failed"));
    }
}

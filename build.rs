//! Build facts for `roomhook --version` and `roomhook_build_info` (git commit, target,
//! profile), and the `roomhook.toml(5)` man page, written from the README's configuration
//! reference so that it is never kept by hand.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rustc-env=ROOMHOOK_BUILD_COMMIT={}", commit());
    println!(
        "cargo:rustc-env=ROOMHOOK_BUILD_TARGET={}",
        env::var("TARGET").unwrap_or_default()
    );
    println!("cargo:rustc-env=ROOMHOOK_BUILD_PROFILE={}", profile(&out));
    println!("cargo:rustc-env=ROOMHOOK_BUILD_FEATURES={}", features());
    println!("cargo:rerun-if-changed=README.md");
    let readme = fs::read_to_string("README.md").expect("README.md");
    let page = config_man_page(&readme, env!("CARGO_PKG_VERSION"));
    fs::write(out.join("roomhook.toml.5"), page).expect("write roomhook.toml.5");
}

/// The checkout's commit (12 hex digits, "-dirty" if tracked files differ from it), or
/// "unknown" outside a git checkout (a source tarball, `cargo install` from crates.io).
/// Reruns when HEAD moves: a commit, a checkout, a rebase.
fn commit() -> String {
    println!("cargo:rerun-if-env-changed=ROOMHOOK_BUILD_COMMIT");
    if let Ok(given) = env::var("ROOMHOOK_BUILD_COMMIT") {
        return given;
    }
    let git = |args: &[&str]| -> Option<String> {
        let o = Command::new("git").args(args).output().ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(hash) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    // Rerun when HEAD or the branch it names moves (files that exist only: a missing
    // one would rerun the script on every build).
    for name in ["HEAD", "packed-refs"] {
        watch(git(&["rev-parse", "--git-path", name]));
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(git(&["rev-parse", "--git-path", &branch]));
    }
    // Uncommitted changes to what is compiled make it "-dirty".
    for path in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={path}");
    }
    // --no-optional-locks: no index refresh, which could collide with the user's own git.
    let dirty = Command::new("git")
        .args(["--no-optional-locks", "diff", "--quiet", "HEAD", "--"])
        .args(["src", "Cargo.toml", "Cargo.lock"])
        .status()
        .map(|s| s.code() == Some(1))
        .unwrap_or(false);
    if dirty {
        format!("{hash}-dirty")
    } else {
        hash
    }
}

/// The optional features built in, as `--version` shows them: "demo", "demo faults
/// testkit" (the tests), or "none; no demo" (the gateway builds).
fn features() -> String {
    let on: Vec<&str> = ["demo", "faults", "testkit"]
        .into_iter()
        .filter(|f| env::var_os(format!("CARGO_FEATURE_{}", f.to_uppercase())).is_some())
        .collect();
    if on.is_empty() {
        "none; no demo".into()
    } else {
        on.join(" ")
    }
}

fn watch(path: Option<String>) {
    if let Some(p) = path.filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={p}");
    }
}

/// The profile's name (`release`, `gateway`, `ci`, `dev`): the directory under `target/`
/// that holds `build/<crate>/out`.
fn profile(out: &Path) -> String {
    let dir = out
        .ancestors()
        .nth(3)
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match dir.as_str() {
        "debug" => "dev".into(),
        "" => env::var("PROFILE").unwrap_or_default(),
        d => d.into(),
    }
}

/// `roomhook.toml(5)` in roff: the README's "### Reference" section (its tables become
/// tagged paragraphs, one per key) up to the next heading of that level.
fn config_man_page(readme: &str, version: &str) -> String {
    let mut lines = readme
        .lines()
        .skip_while(|l| l.trim() != "### Reference")
        .skip(1)
        .take_while(|l| !l.starts_with("### ") && !l.starts_with("## "));
    let mut page = format!(
        ".TH ROOMHOOK.TOML 5 \"\" \"roomhook {version}\" \"File Formats\"\n\
         .SH NAME\nroomhook.toml \\- configuration of the roomhook daemon\n\
         .SH SYNOPSIS\n/etc/roomhook/roomhook.toml\n\
         .SH DESCRIPTION\nOne TOML file, read by \\fBroomhook run \\-c\\fR \\fIFILE\\fR and checked by \
         \\fBroomhook check\\-config \\-c\\fR \\fIFILE\\fR, which prints every problem with its file, \
         line, key and fix. Relative paths in it are relative to the directory of the file. \
         Durations are written \"500ms\", \"15s\", \"5m\", \"2h\", \"7d\"; sizes \"64KiB\", \"128MiB\".\n"
    );
    let mut paragraph = String::new();
    let flush = |paragraph: &mut String, page: &mut String| {
        if !paragraph.is_empty() {
            page.push_str(".PP\n");
            page.push_str(&roff_text(paragraph));
            page.push('\n');
            paragraph.clear();
        }
    };
    for line in lines.by_ref() {
        let t = line.trim();
        if t.is_empty() {
            flush(&mut paragraph, &mut page);
        } else if let Some(table) = t.strip_prefix("`[").and_then(|r| r.split_once('`')) {
            // A section heading such as `[gateway]` or `[[webhooks]] — one table per …`.
            flush(&mut paragraph, &mut page);
            page.push_str(&format!(".SH [{}\n", roff_text(table.0)));
            paragraph.push_str(table.1.trim_start_matches([' ', '—']).trim());
        } else if t.starts_with("Secret files") && paragraph.is_empty() {
            page.push_str(".SH SECRET FILES\n");
            paragraph.push_str(t);
        } else if t.starts_with('|') {
            flush(&mut paragraph, &mut page);
            let cells: Vec<&str> = t.trim_matches('|').split(" | ").map(str::trim).collect();
            let header = cells.first().is_some_and(|c| *c == "key");
            let rule = cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ' '));
            if header || rule || cells.len() < 2 {
                continue;
            }
            page.push_str(".TP\n");
            page.push_str(&roff_text(cells[0]));
            if cells.len() >= 3 {
                page.push_str(&format!(" (default: {})", roff_text(cells[1])));
            }
            page.push('\n');
            page.push_str(&roff_text(cells[cells.len() - 1]));
            page.push('\n');
        } else {
            if !paragraph.is_empty() {
                paragraph.push(' ');
            }
            paragraph.push_str(t);
        }
    }
    flush(&mut paragraph, &mut page);
    page.push_str(
        ".SH SEE ALSO\n\\fBroomhook\\fR(1), \\fBroomhook\\-run\\fR(1), \
         \\fBroomhook\\-check\\-config\\fR(1), /usr/share/doc/roomhook/README.md\n",
    );
    page
}

/// Markdown inline text as roff: `code` in bold, [text](link) as its text, escapes.
fn roff_text(md: &str) -> String {
    let mut s = String::new();
    let mut code = false;
    let mut chars = md.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' => {
                s.push_str(if code { "\\fR" } else { "\\fB" });
                code = !code;
            }
            '\\' => s.push_str("\\e"),
            '-' => s.push_str("\\-"),
            '[' if !code => {
                // [text](target) → text; a bracket that is not a link stays.
                let rest: String = chars.clone().collect();
                match (rest.find("]("), rest.find(')')) {
                    (Some(close), Some(end)) if close < end && !rest[..close].contains('[') => {
                        s.push_str(&roff_text(&rest[..close]));
                        for _ in 0..=end {
                            chars.next();
                        }
                    }
                    _ => s.push('['),
                }
            }
            '.' | '\'' if s.is_empty() || s.ends_with('\n') => {
                s.push_str("\\&");
                s.push(c);
            }
            _ => s.push(c),
        }
    }
    if code {
        s.push_str("\\fR");
    }
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("<br>", " ")
}

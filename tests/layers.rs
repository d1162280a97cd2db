//! The layers of `src/`, enforced: every `crate::` path in a module must name a module of a
//! lower layer (or its own). The table below is the one the README's Layout section draws;
//! an import that runs up or sideways fails this test, which prints the edge and where.

use std::collections::BTreeMap;
use std::path::Path;

/// Each top-level module of `src/` and its layer: a module may import only from lower
/// layers. Utilities at the bottom import nothing of the pipeline; the model comes next;
/// then the event's path: config → store → route → ingest → source, deliver → supervisor →
/// admin → fleet → daemon → demo → cli.
const LAYERS: &[(&str, u32)] = &[
    // Utilities.
    ("backoff", 0),
    ("files", 0),
    ("logging", 0),
    ("pulse", 0),
    ("ratelog", 0),
    ("redact", 0),
    ("timefmt", 0),
    ("version", 0),
    ("metrics", 1),
    ("tls", 1),
    ("wallclock", 1),
    // The model: shared value types, the catalog, the event, the devices seen.
    ("value", 2),
    ("catalog", 2),
    ("event", 3),
    ("seen", 4),
    // The event's path.
    ("config", 5),
    ("store", 6),
    ("route", 7),
    ("ingest", 8),
    ("source", 9),
    ("deliver", 9),
    ("supervisor", 10),
    ("admin", 11),
    ("fleet", 12),
    ("daemon", 13),
    ("demo", 14),
    ("cli", 15),
];

/// Edges the table allows as exceptions, each with its reason (none today).
const EXCEPTIONS: &[(&str, &str, &str)] = &[];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// `crate::name` paths in `text`, comments left out. A file's inline unit tests (from a
/// `#[cfg(test)]` or `#[cfg(all(test, …))]` `mod … {` to the end of the file, where they sit) are not part of what ships: they may
/// use the test rig of a higher layer (the demo receiver).
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let tests_from = lines
        .windows(2)
        .position(|w| {
            let attr = w[0].trim();
            (attr == "#[cfg(test)]" || attr.starts_with("#[cfg(all(test"))
                && w[1].trim_start().starts_with("mod ")
                && w[1].trim_end().ends_with('{')
        })
        .unwrap_or(lines.len());
    for (n, line) in lines[..tests_from].iter().enumerate() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
            rest = after;
        }
    }
    out
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn every_import_points_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut wrong: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or("");
        // The crate root and the binaries sit above every module.
        if matches!(first, "lib.rs" | "main.rs" | "bin") {
            continue;
        }
        let module = first.trim_end_matches(".rs");
        let Some(own) = layer(module) else {
            unknown.push(module.to_string());
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read");
        for (line, target) in crate_paths(&text) {
            if target == module {
                continue;
            }
            let Some(theirs) = layer(&target) else {
                // A crate-root item (a re-export) is not a module of the table.
                if target.chars().next().is_some_and(|c| c.is_lowercase())
                    && target != "install_crypto_provider"
                {
                    unknown.push(target.clone());
                }
                continue;
            };
            let excepted = EXCEPTIONS
                .iter()
                .any(|(from, to, _)| *from == module && *to == target);
            if theirs >= own && !excepted {
                wrong
                    .entry((module.to_string(), target.clone()))
                    .or_default()
                    .push(format!("{}:{line}", rel.display()));
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    assert!(
        unknown.is_empty(),
        "modules missing from the layer table in tests/layers.rs (and the README's Layout): {unknown:?}"
    );
    let report: Vec<String> = wrong
        .iter()
        .map(|((from, to), at)| {
            format!(
                "{from} (layer {}) -> {to} (layer {}): {}",
                layer(from).unwrap_or(0),
                layer(to).unwrap_or(0),
                at.join(", ")
            )
        })
        .collect();
    assert!(
        report.is_empty(),
        "imports that run up or sideways:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_readme_draws_the_same_table() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README");
    for (module, layer) in LAYERS {
        let row = format!("| {layer} | `{module}`");
        assert!(
            readme.contains(&row),
            "the README's Layout table has no row starting {row:?}"
        );
    }
}

/// Every file of `src/` is named in the README's Layout: by its path, or by its name in the
/// row of a directory that holds it (`mod.rs` goes with its directory's row).
#[test]
fn the_readme_layout_names_every_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let start = readme.find("## Layout").expect("a Layout section");
    let end = readme[start + 1..]
        .find("\n## ")
        .map_or(readme.len(), |i| start + 1 + i);
    let rows: Vec<&str> = readme[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .collect();
    let mut files = Vec::new();
    walk(&root.join("src"), &mut files);
    let mut missing = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(root)
            .expect("under the crate")
            .to_string_lossy()
            .to_string();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let named = rows.iter().any(|row| {
            let key = row.split(" | ").next().unwrap_or("");
            if row.contains(&format!("`{rel}`")) {
                return true;
            }
            // A directory row (`src/deliver/`) that holds the file and names it (or any row
            // of its own directory, for mod.rs).
            key.split('`')
                .filter(|k| k.ends_with('/') && rel.starts_with(*k))
                .any(|dir| {
                    let sub = &rel[dir.len()..];
                    (name == "mod.rs" && !sub.contains('/'))
                        || row.contains(&format!("`{sub}`"))
                        || row.contains(&format!("`{name}`"))
                        || row.contains(&format!("{name}`"))
                })
        });
        if !named {
            missing.push(rel);
        }
    }
    assert!(
        missing.is_empty(),
        "files of src/ the README's Layout does not name: {missing:?}"
    );
}

//! `docs/openapi.yaml` names every route the admin listener answers: the routes are read
//! from the routers' source (`src/admin/mod.rs`, `control.rs`, `console/mod.rs`) and each
//! must be an operation under `paths:` (the console's under `x-console-routes:`), and each
//! documented one must exist. Every status the routers answer must be documented too. A
//! text scan (no YAML parser): `tests/openapi/check.sh` checks the document itself against
//! the running daemon with schemathesis.

use std::collections::BTreeSet;
use std::path::Path;

/// A route: method (upper case, or `ANY`) and path (`{…}` for a parameter).
type Route = (String, String);

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The body of `fn name(` in `src` (from its first `{` to the matching `}`).
fn function<'a>(src: &'a str, name: &str) -> &'a str {
    let start = src
        .find(&format!("fn {name}("))
        .unwrap_or_else(|| panic!("no fn {name} in the source"));
    let open = start + src[start..].find('{').expect("a body");
    let mut depth = 0;
    for (i, c) in src[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &src[open..open + i + 1];
                }
            }
            _ => {}
        }
    }
    panic!("fn {name} does not end");
}

/// `{name}`, `{path}` … all read as `{}`, so parameter names do not matter.
fn normalise(path: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in path.chars() {
        match c {
            '{' => {
                inside = true;
                out.push('{');
            }
            '}' => {
                inside = false;
                out.push('}');
            }
            _ if inside => {}
            _ => out.push(c),
        }
    }
    out
}

/// The string literals in `s`, in order.
fn literals(s: &str) -> Vec<String> {
    s.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The control API's routes: the arms `(&Method::GET, ["v1", "webhooks", name, …])` of
/// `control::handle`. A literal segment is itself, an identifier a parameter, and
/// `x @ ("a" | "b")` one route per alternative.
fn control_routes(src: &str) -> BTreeSet<Route> {
    let body = function(src, "handle");
    let mut routes = BTreeSet::new();
    for arm in body.split("(&Method::").skip(1) {
        let method: String = arm.chars().take_while(char::is_ascii_alphabetic).collect();
        let Some(open) = arm.find('[') else { continue };
        let close = open + arm[open..].find(']').expect("a closing ]");
        let mut paths = vec![String::new()];
        for segment in arm[open + 1..close].split(',').map(str::trim) {
            // "v1", or x @ ("enable" | "disable"), or a binding.
            let choices: Vec<String> = if segment.starts_with('"') || segment.contains('@') {
                literals(segment)
            } else {
                vec![format!("{{{segment}}}")]
            };
            assert!(!choices.is_empty(), "cannot read the segment {segment:?}");
            paths = paths
                .iter()
                .flat_map(|p| choices.iter().map(move |c| format!("{p}/{c}")))
                .collect();
        }
        for p in paths {
            routes.insert((method.clone(), p));
        }
    }
    routes
}

/// The listener's own routes: the arms `("GET", "/metrics")` of `admin::handle`.
fn listener_routes(src: &str) -> BTreeSet<Route> {
    let body = function(src, "handle");
    let mut routes = BTreeSet::new();
    for arm in body.split("(\"").skip(1) {
        let lits = literals(&format!("\"{arm}"));
        if let [method, path, ..] = lits.as_slice() {
            if method.chars().all(|c| c.is_ascii_uppercase()) && path.starts_with('/') {
                routes.insert((method.clone(), path.clone()));
            }
        }
    }
    routes
}

/// The console's routes: the arms `("GET", "/console/state", Some(_))` of
/// `Console::handle`, its `p.starts_with("/console/chart/") && p.ends_with(".svg")` route
/// and `/console/v1/…` (the control API behind the session).
fn console_routes(src: &str) -> BTreeSet<Route> {
    let body = function(src, "handle");
    let mut routes = listener_routes(src);
    for arm in body.split("p.starts_with(\"").skip(1) {
        let prefix = &arm[..arm.find('"').expect("a literal")];
        let suffix = arm
            .split("p.ends_with(\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("");
        let before = &body[..body.find(arm).expect("the arm")];
        let method = before
            .trim_end_matches("p.starts_with(\"")
            .rsplit("(\"")
            .next()
            .and_then(|s| s.split('"').next())
            .expect("the arm's method");
        routes.insert((method.to_string(), format!("{prefix}{{}}{suffix}")));
    }
    if body.contains("rest.starts_with(\"/v1/\")") {
        routes.insert(("ANY".into(), "/console/v1/{}".into()));
    }
    routes
}

/// The operations under `paths:`: path keys at two spaces, methods at four.
fn documented_paths(doc: &str) -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    let mut in_paths = false;
    let mut path: Option<String> = None;
    for line in doc.lines() {
        if !line.starts_with(' ') && !line.is_empty() && !line.starts_with('#') {
            in_paths = line.trim_end() == "paths:";
            path = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(key) = line.strip_prefix("  ").filter(|l| l.starts_with('/')) {
            path = Some(key.trim_end().trim_end_matches(':').to_string());
        } else if let (Some(p), Some(key)) = (&path, line.strip_prefix("    ")) {
            let method = key.trim_end().trim_end_matches(':');
            if !key.starts_with(' ')
                && key.trim_end().ends_with(':')
                && ["get", "put", "post", "delete", "patch", "head", "options"].contains(&method)
            {
                routes.insert((method.to_uppercase(), p.clone()));
            }
        }
    }
    routes
}

/// The `method:`/`path:` pairs under `x-console-routes:`.
fn documented_console(doc: &str) -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    let mut inside = false;
    let mut method: Option<String> = None;
    for line in doc.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            inside = line.trim_end() == "x-console-routes:";
            continue;
        }
        if !inside {
            continue;
        }
        let l = line.trim_start().trim_start_matches("- ");
        if let Some(m) = l.strip_prefix("method: ") {
            method = Some(m.trim().to_string());
        } else if let Some(p) = l.strip_prefix("path: ") {
            let m = method.take().expect("a method before each path");
            routes.insert((m, p.trim().trim_matches('"').to_string()));
        }
    }
    routes
}

/// What one side has that the other has not, parameters compared by position only.
fn missing(wanted: &BTreeSet<Route>, present: &BTreeSet<Route>) -> Vec<String> {
    let present: BTreeSet<Route> = present
        .iter()
        .map(|(m, p)| (m.clone(), normalise(p)))
        .collect();
    wanted
        .iter()
        .filter(|(m, p)| !present.contains(&(m.clone(), normalise(p))))
        .map(|(m, p)| format!("{m} {p}"))
        .collect()
}

fn api_routes(mod_rs: &str, control_rs: &str) -> BTreeSet<Route> {
    let mut routes = listener_routes(mod_rs);
    routes.extend(control_routes(control_rs));
    routes
}

#[test]
fn every_route_of_the_admin_listener_is_in_the_document_and_no_other() {
    let doc = read("docs/openapi.yaml");
    let code = api_routes(&read("src/admin/mod.rs"), &read("src/admin/control.rs"));
    assert!(
        code.len() >= 15,
        "the route scan found only {code:?}: has the router's form changed? Update tests/openapi.rs"
    );
    let documented = documented_paths(&doc);
    let undocumented = missing(&code, &documented);
    assert!(
        undocumented.is_empty(),
        "routes the admin listener answers that docs/openapi.yaml does not document: {undocumented:?}"
    );
    let phantom = missing(&documented, &code);
    assert!(
        phantom.is_empty(),
        "operations docs/openapi.yaml documents that the admin listener does not answer: {phantom:?}"
    );
}

#[test]
fn every_console_route_is_listed_in_the_document() {
    let doc = read("docs/openapi.yaml");
    let code = console_routes(&read("src/admin/console/mod.rs"));
    assert!(
        code.len() >= 9,
        "the console route scan found only {code:?}: has its router's form changed? Update tests/openapi.rs"
    );
    let listed = documented_console(&doc);
    let unlisted = missing(&code, &listed);
    assert!(
        unlisted.is_empty(),
        "console routes missing from x-console-routes in docs/openapi.yaml: {unlisted:?}"
    );
    let phantom = missing(&listed, &code);
    assert!(
        phantom.is_empty(),
        "x-console-routes lists routes the console does not answer: {phantom:?}"
    );
}

/// HTTP statuses by the name `hyper::StatusCode` gives them.
const STATUSES: &[(&str, u16)] = &[
    ("OK", 200),
    ("CREATED", 201),
    ("NO_CONTENT", 204),
    ("BAD_REQUEST", 400),
    ("UNAUTHORIZED", 401),
    ("FORBIDDEN", 403),
    ("NOT_FOUND", 404),
    ("METHOD_NOT_ALLOWED", 405),
    ("CONFLICT", 409),
    ("PAYLOAD_TOO_LARGE", 413),
    ("UNSUPPORTED_MEDIA_TYPE", 415),
    ("UNPROCESSABLE_ENTITY", 422),
    ("TOO_MANY_REQUESTS", 429),
    ("INTERNAL_SERVER_ERROR", 500),
    ("SERVICE_UNAVAILABLE", 503),
];

/// The statuses `src` answers (`StatusCode::NAME`), as numbers.
fn statuses_in(src: &str) -> BTreeSet<u16> {
    src.split("StatusCode::")
        .skip(1)
        .map(|s| {
            let name: String = s
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            STATUSES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, code)| *code)
                .unwrap_or_else(|| {
                    panic!("StatusCode::{name}: add it to STATUSES in tests/openapi.rs")
                })
        })
        .collect()
}

/// The statuses the listener and the control API answer that no operation under
/// `paths:` documents.
fn undocumented_statuses(doc: &str, sources: &[&str]) -> Vec<u16> {
    let paths = &doc[doc.find("\npaths:\n").expect("paths:")..];
    let answered: BTreeSet<u16> = sources.iter().flat_map(|s| statuses_in(s)).collect();
    answered
        .into_iter()
        .filter(|code| !paths.contains(&format!("\"{code}\":")))
        .collect()
}

#[test]
fn every_status_the_control_api_answers_is_documented() {
    let doc = read("docs/openapi.yaml");
    let undocumented = undocumented_statuses(
        &doc,
        &[&read("src/admin/mod.rs"), &read("src/admin/control.rs")],
    );
    assert!(
        undocumented.is_empty(),
        "statuses the control API answers that no operation in docs/openapi.yaml documents: {undocumented:?}"
    );
}

// The checks above must be able to fail: a route or status added to the source and not to
// the document is reported.

#[test]
fn a_new_control_route_without_documentation_is_reported() {
    let doc = read("docs/openapi.yaml");
    let control = read("src/admin/control.rs").replacen(
        "(&Method::GET, [\"v1\", \"status\"])",
        "(&Method::POST, [\"v1\", \"webhooks\", name, \"pause\"]) => todo!(),\n        (&Method::GET, [\"v1\", \"status\"])",
        1,
    );
    let code = api_routes(&read("src/admin/mod.rs"), &control);
    assert_eq!(
        missing(&code, &documented_paths(&doc)),
        vec!["POST /v1/webhooks/{name}/pause".to_string()]
    );
}

#[test]
fn a_new_listener_route_or_a_dropped_operation_is_reported() {
    let doc = read("docs/openapi.yaml");
    let listener = read("src/admin/mod.rs").replacen(
        "(\"GET\", \"/healthz\")",
        "(\"GET\", \"/version\") => todo!(),\n        (\"GET\", \"/healthz\")",
        1,
    );
    let code = api_routes(&listener, &read("src/admin/control.rs"));
    assert_eq!(
        missing(&code, &documented_paths(&doc)),
        vec!["GET /version".to_string()]
    );
    // The document loses an operation: the route is reported as undocumented.
    let shorter = doc.replacen("  /v1/reload:\n    post:", "  /v1/reload:\n    x-post:", 1);
    assert_eq!(
        missing(
            &api_routes(&read("src/admin/mod.rs"), &read("src/admin/control.rs")),
            &documented_paths(&shorter)
        ),
        vec!["POST /v1/reload".to_string()]
    );
}

#[test]
fn a_new_console_route_without_listing_is_reported() {
    let doc = read("docs/openapi.yaml");
    let console = read("src/admin/console/mod.rs").replacen(
        "(\"GET\", \"/console/app.js\", Some(_))",
        "(\"GET\", \"/console/export.csv\", Some(_)) => todo!(),\n            (\"GET\", \"/console/app.js\", Some(_))",
        1,
    );
    assert_eq!(
        missing(&console_routes(&console), &documented_console(&doc)),
        vec!["GET /console/export.csv".to_string()]
    );
}

#[test]
fn a_status_without_documentation_is_reported() {
    let doc = read("docs/openapi.yaml").replace("\"422\":", "\"4xx\":");
    let sources = [read("src/admin/mod.rs"), read("src/admin/control.rs")];
    assert_eq!(
        undocumented_statuses(&doc, &[&sources[0], &sources[1]]),
        vec![422]
    );
    let unknown = std::panic::catch_unwind(|| statuses_in("reply(StatusCode::GONE, body)"));
    assert!(
        unknown.is_err(),
        "a status missing from STATUSES stops the test"
    );
}

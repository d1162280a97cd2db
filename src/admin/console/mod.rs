//! The web console on the admin listener (`[admin] console = true`, with `[admin] token`):
//! a sign-in page, a live view of webhooks, sources and the store (a small script polls
//! `/console/state`), the webhook actions (`/console/v1/…` is the control API itself, the
//! same code path as `roomhook webhook …`), and sign-out. Nothing but the sign-in page
//! answers without a session; every form and every action carries its session's CSRF
//! token. HTML, CSS and script are compiled in.

pub(crate) mod chart;
pub(crate) mod sessions;

use crate::admin::control::Control;
use crate::config::Secret;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use hyper::{Request, Response, StatusCode};
use sessions::{csrf_ok, Session, Sessions};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

const COOKIE_NAME: &str = "roomhook_session";
const STYLE: &str = include_str!("style.css");
/// The sign-in page and the app page with the style in place (filled in once).
static LOGIN: LazyLock<String> =
    LazyLock::new(|| include_str!("login.html").replace("__STYLE__", STYLE));
static APP: LazyLock<String> =
    LazyLock::new(|| include_str!("app.html").replace("__STYLE__", STYLE));
const SCRIPT: &str = include_str!("app.js");
/// Largest form body read.
const MAX_FORM: usize = 4096;

/// The console's state: the token that opens it, the open sessions, and the devices seen.
pub(crate) struct Console {
    token: Secret,
    sessions: Mutex<Sessions>,
    seen: Arc<crate::seen::Seen>,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; style-src 'unsafe-inline' 'self'; frame-ancestors 'none'",
        ),
    );
    r
}

/// A redirect to `/` that sets the session cookie to `value` for `max_age` seconds (0: ends
/// it); `Secure` when the browser came over TLS.
fn redirect_with_session(value: &str, max_age: u64, tls: bool) -> Reply {
    let mut r = reply(StatusCode::SEE_OTHER, "text/plain", String::new());
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/"));
    let cookie = format!(
        "{COOKIE_NAME}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{}",
        if tls { "; Secure" } else { "" }
    );
    if let Ok(c) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, c);
    }
    r
}

fn login_page(status: StatusCode, message: &str) -> Reply {
    let html = LOGIN.replace("__MESSAGE__", &html_escape(message));
    reply(status, "text/html; charset=utf-8", html)
}

/// Text made safe for HTML (and SVG) text and attributes.
fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The session cookie's value in a request.
fn cookie(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE_NAME).then(|| v.to_string())
        })
}

async fn form(req: Request<Incoming>) -> Vec<(String, String)> {
    let Ok(body) = Limited::new(req.into_body(), MAX_FORM).collect().await else {
        return Vec::new();
    };
    url::form_urlencoded::parse(&body.to_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// What the add and edit forms offer: the catalog grouped by its first level (statuses with
/// their value types, events) and the defaults of the pacing keys (built once), and the
/// devices seen so far.
fn catalog(devices: Vec<String>) -> serde_json::Value {
    static FIXED: LazyLock<serde_json::Value> = LazyLock::new(fixed_catalog);
    let mut c = FIXED.clone();
    c["devices"] = devices.into();
    c
}

fn fixed_catalog() -> serde_json::Value {
    use crate::catalog::{Kind, ValueType, ENTRIES};
    let entry = |e: &crate::catalog::Entry| {
        let value = match e.value {
            ValueType::Integer => "integer".to_string(),
            ValueType::Decimal => "decimal".to_string(),
            ValueType::Enum(values) => values.join(" | "),
            ValueType::Text => "text".to_string(),
            ValueType::Object => "event".to_string(),
        };
        let group = match e.path.split_once('.') {
            Some((first, _)) => first,
            None if e.kind == Kind::Event => "Calls and system",
            None => "Other",
        };
        serde_json::json!({ "path": e.path, "type": value, "group": group })
    };
    serde_json::json!({
        "statuses": ENTRIES.iter().filter(|e| e.kind == Kind::Status).map(entry).collect::<Vec<_>>(),
        "events": ENTRIES.iter().filter(|e| e.kind == Kind::Event).map(entry).collect::<Vec<_>>(),
        "defaults": crate::config::WEBHOOK_DEFAULTS
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect::<serde_json::Map<_, _>>(),
    })
}

impl Console {
    /// A console opened by `token`, showing the devices `seen` noted.
    pub(crate) fn new(token: Secret, seen: Arc<crate::seen::Seen>) -> Self {
        Console {
            token,
            sessions: Mutex::new(Sessions::default()),
            seen,
        }
    }

    fn session(&self, req: &Request<Incoming>) -> Option<(String, Session)> {
        let id = cookie(req)?;
        let s = self.sessions.lock().ok()?.get(&id, Instant::now())?;
        Some((id, s))
    }

    /// Whether a path is the console's.
    pub(crate) fn owns(path: &str) -> bool {
        matches!(path, "/" | "/login" | "/logout") || path.starts_with("/console/")
    }

    /// Answers a console request from `peer`.
    pub(crate) async fn handle(
        &self,
        req: Request<Incoming>,
        peer: IpAddr,
        tls: bool,
        guard: &std::sync::Mutex<crate::admin::guard::Guard>,
        control: Arc<Control>,
    ) -> Reply {
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let session = self.session(&req);
        let sup = &control.supervisor;
        if let (Some(rest), Some((_, s))) = (path.strip_prefix("/console"), session.as_ref()) {
            if rest.starts_with("/v1/") {
                return self.action(req, rest.to_string(), s, control.clone()).await;
            }
        }
        match (method.as_str(), path.as_str(), session) {
            ("POST", "/login", _) => self.login(req, peer, tls, guard).await,
            ("GET", "/", None) => login_page(StatusCode::OK, ""),
            ("GET", "/", Some((_, s))) => {
                let html = APP.replace("__CSRF__", &s.csrf);
                reply(StatusCode::OK, "text/html; charset=utf-8", html)
            }
            ("GET", "/console/app.js", Some(_)) => reply(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                SCRIPT.to_string(),
            ),
            ("GET", "/console/state", Some(_)) => reply(
                StatusCode::OK,
                "application/json",
                crate::admin::status::status(sup).to_string(),
            ),
            ("GET", "/console/catalog", Some(_)) => reply(
                StatusCode::OK,
                "application/json",
                catalog(self.seen.ids()).to_string(),
            ),
            ("GET", "/console/devices", Some(_)) => reply(
                StatusCode::OK,
                "application/json",
                self.seen.view(crate::timefmt::now_ms()).to_string(),
            ),
            ("GET", p, Some(_)) if p.starts_with("/console/chart/") && p.ends_with(".svg") => {
                let name = &p["/console/chart/".len()..p.len() - ".svg".len()];
                let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
                match sup.webhook(&name) {
                    Some(w) => {
                        let minutes = w
                            .status
                            .lock()
                            .map(|st| st.recent.minutes(crate::timefmt::now_ms(), chart::MINUTES))
                            .unwrap_or_default();
                        reply(StatusCode::OK, "image/svg+xml", chart::svg(&name, &minutes))
                    }
                    None => reply(
                        StatusCode::NOT_FOUND,
                        "text/plain; charset=utf-8",
                        format!("no webhook named {name:?}\n"),
                    ),
                }
            }
            ("POST", "/logout", Some((id, s))) => {
                let f = form(req).await;
                if !csrf_ok(&s, field(&f, "csrf")) {
                    return reply(
                        StatusCode::FORBIDDEN,
                        "text/plain; charset=utf-8",
                        "the form's CSRF token is missing or wrong; reload the page\n".into(),
                    );
                }
                if let Ok(mut all) = self.sessions.lock() {
                    all.logout(&id);
                }
                redirect_with_session("", 0, tls)
            }
            (_, _, None) => reply(
                StatusCode::UNAUTHORIZED,
                "application/json",
                r#"{"error":"sign in first"}"#.into(),
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n".into(),
            ),
        }
    }

    /// A control API call of the console's script: the session's CSRF token in
    /// `X-CSRF-Token` on anything but GET, then the control API as the CLI reaches it.
    async fn action(
        &self,
        req: Request<Incoming>,
        path: String,
        s: &Session,
        control: Arc<Control>,
    ) -> Reply {
        if req.method() != hyper::Method::GET {
            let given = req
                .headers()
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok());
            if !csrf_ok(s, given) {
                return reply(
                    StatusCode::FORBIDDEN,
                    "application/json",
                    r#"{"error":"the CSRF token is missing or wrong; reload the page"}"#.into(),
                );
            }
        }
        let (mut parts, body) = req.into_parts();
        let pq = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        match pq.parse::<hyper::Uri>() {
            Ok(uri) => parts.uri = uri,
            Err(_) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "application/json",
                    r#"{"error":"bad path"}"#.into(),
                )
            }
        }
        match crate::admin::control::handle(Request::from_parts(parts, body), control).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    async fn login(
        &self,
        req: Request<Incoming>,
        peer: IpAddr,
        tls: bool,
        guard: &std::sync::Mutex<crate::admin::guard::Guard>,
    ) -> Reply {
        let f = form(req).await;
        let good = field(&f, "token").is_some_and(|t| super::token_matches(&self.token, t));
        match crate::admin::guarded(guard, peer, good).await {
            Ok(()) => {
                let id = match self.sessions.lock() {
                    Ok(mut s) => s.open(Instant::now()),
                    Err(_) => return login_page(StatusCode::INTERNAL_SERVER_ERROR, "try again"),
                };
                redirect_with_session(&id, sessions::SESSION_IDLE.as_secs(), tls)
            }
            Err(None) => login_page(StatusCode::UNAUTHORIZED, "That is not the admin token."),
            Err(Some((status, _, wait))) => {
                let mut r = login_page(
                    status,
                    &format!("Too many wrong tokens from this address; try again in {wait} s."),
                );
                r.headers_mut()
                    .insert(hyper::header::RETRY_AFTER, wait.into());
                r
            }
        }
    }
}

//! The one HTTP client of the tests and the benchmark (hyper, HTTP/1.1 on loopback), for
//! the daemon's admin listener: metrics, health, the console and the control API over TCP.
//! Blocking, so that it can be called from a `wait_until` condition: each request runs on
//! a thread of its own with a small runtime (`block_on_thread`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::time::Duration;

/// An answer: status (0 when nothing answered), headers (names lower-case) and body.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// The status code, or 0 when the connection failed or nothing answered in time.
    pub status: u16,
    /// Header names (lower-case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

impl Answer {
    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `method path` on 127.0.0.1:`port` with the given headers and body; waits up to 20 s.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    request_from(
        std::net::Ipv4Addr::LOCALHOST,
        port,
        method,
        path,
        headers,
        body,
    )
}

/// [`request`] from the loopback address `from` (another 127.x.y.z is another client to
/// the daemon).
pub fn request_from(
    from: std::net::Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let uri = format!("http://127.0.0.1:{port}{path}");
    crate::block_on_thread(async {
        let go = async {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind((from, 0).into()).ok()?;
            let stream = socket
                .connect((std::net::Ipv4Addr::LOCALHOST, port).into())
                .await
                .ok()?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
            tokio::spawn(conn);
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(&uri)
                .header("host", format!("127.0.0.1:{port}"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Full::new(Bytes::from(body.to_string()))).ok()?;
            let res = sender.send_request(req).await.ok()?;
            let status = res.status().as_u16();
            let headers = res
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let bytes = res.into_body().collect().await.ok()?.to_bytes();
            Some(Answer {
                status,
                headers,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            })
        };
        tokio::time::timeout(Duration::from_secs(20), go)
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    })
    .unwrap_or_default()
}

/// `GET path` with an optional Authorization header: the status (0 when nothing answers)
/// and the body.
pub fn http_get(port: u16, path: &str, authorization: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    let a = request(port, "GET", path, &headers, "");
    (a.status, a.body)
}

/// The text of `GET /metrics` from a roomhook admin listener (empty on error).
pub fn scrape(port: u16) -> String {
    http_get(port, "/metrics", None).1
}

/// The value of one series (`name{labels}`, exactly as exposed) from `GET /metrics`.
pub fn metric(port: u16, series: &str) -> Option<f64> {
    scrape(port)
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

//! HTTP/1.x conformance inside a tunnel, spoken byte by byte: an HTTP/1.0 upstream is answered
//! to an HTTP/1.1 client as `HTTP/1.1` with keep-alive intact; an HTTP/1.0 client gets no
//! transfer coding; pipelined requests are all answered, in order (RFC 9112 §9.3.2); a
//! smuggling attempt inside a pipeline is refused and no request hidden in it reaches the app.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use waypoint_tests::{reviews_yaml, Mesh};

const TO_V1: &str = "  - route: [{destination: {host: reviews, subset: v1}}]\n";
const VIP: &str = "10.0.0.10:9080";
/// Bound on every read of a response.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// One response as it came on the wire.
#[derive(Debug)]
struct Wire {
    status_line: String,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path the sim app echoed.
    fn echoed_path(&self) -> String {
        let echo: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("echo body ({e}): {self:?}"));
        echo["path"].as_str().unwrap().to_string()
    }
}

/// Reads responses off a tunnel, keeping bytes past the end of one for the next.
struct Responses<S> {
    io: S,
    buf: Vec<u8>,
    eof: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Responses<S> {
    fn new(io: S) -> Self {
        Self {
            io,
            buf: Vec::new(),
            eof: false,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// More bytes; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut b = [0u8; 16 * 1024];
        let n = tokio::time::timeout(READ_LIMIT, self.io.read(&mut b))
            .await
            .expect("a read within the limit")
            .unwrap_or(0);
        self.buf.extend_from_slice(&b[..n]);
        self.eof = n == 0;
        n > 0
    }

    /// True when the peer ends the stream with nothing more.
    async fn closed(&mut self) -> bool {
        while self.buf.is_empty() {
            if !self.fill().await {
                return true;
            }
        }
        false
    }

    /// The next response; `None` if the stream ends first. The body is framed as the response
    /// says: content-length, chunked, or up to the end of the stream.
    async fn next(&mut self, head_request: bool) -> Option<Wire> {
        let end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "cut head: {:?}", self.buf);
                return None;
            }
        };
        let head = String::from_utf8(self.buf.drain(..end).collect()).unwrap();
        let mut lines = head.trim_end().split("\r\n");
        let status_line = lines.next().unwrap().to_string();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let mut wire = Wire {
            status_line,
            headers,
            body: Vec::new(),
        };
        if head_request || wire.status_line.contains(" 204 ") {
            return Some(wire);
        }
        if wire.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    assert!(self.fill().await, "cut chunk size");
                };
                let size_line = String::from_utf8(self.buf.drain(..line_end + 2).collect())
                    .unwrap()
                    .trim()
                    .to_string();
                let size = usize::from_str_radix(size_line.split(';').next().unwrap(), 16)
                    .unwrap_or_else(|e| panic!("chunk size {size_line:?}: {e}"));
                while self.buf.len() < size + 2 {
                    assert!(self.fill().await, "cut chunk");
                }
                wire.body.extend(self.buf.drain(..size));
                assert_eq!(self.buf.drain(..2).collect::<Vec<_>>(), b"\r\n");
                if size == 0 {
                    return Some(wire);
                }
            }
        } else if let Some(len) = wire.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill().await, "cut body");
            }
            wire.body = self.buf.drain(..len).collect();
            Some(wire)
        } else {
            while self.fill().await {}
            wire.body = std::mem::take(&mut self.buf);
            Some(wire)
        }
    }
}

async fn mesh() -> Mesh {
    Mesh::start(&reviews_yaml("ROUND_ROBIN", TO_V1)).await
}

async fn open(mesh: &Mesh) -> Responses<waypoint::transport::hbone::H2Stream> {
    Responses::new(mesh.client().tunnel(VIP.parse().unwrap()).await.unwrap())
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: reviews:9080\r\n{extra}\r\n")
}

/// An HTTP/1.0 upstream (content-length, then close-delimited) answered to an HTTP/1.1 client:
/// `HTTP/1.1` status lines, the length-less body chunked, no `connection: close`, and the
/// tunnel carries the next request (before the fix: `HTTP/1.0 200` with a content-length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_upstream_is_answered_as_http11_and_keep_alive_holds() {
    let mesh = mesh().await;
    let mut t = open(&mesh).await;
    for (path, mode) in [("/len", "length"), ("/close", "close"), ("/len2", "length")] {
        t.send(get(path, &format!("x-http10: {mode}\r\n")).as_bytes())
            .await;
        let r = t.next(false).await.expect("a response");
        assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{r:?}");
        assert_eq!(r.header("connection"), Some("keep-alive"), "{r:?}");
        match mode {
            "length" => assert!(r.header("content-length").is_some(), "{r:?}"),
            _ => assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}"),
        }
        assert_eq!(r.echoed_path(), path);
    }
    // A plain request still rides the same tunnel.
    t.send(get("/after", "").as_bytes()).await;
    let r = t.next(false).await.expect("the tunnel stayed open");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_eq!(r.echoed_path(), "/after");
    assert_eq!(
        mesh.app("reviews-v1")
            .stats
            .requests
            .load(Ordering::Relaxed),
        4
    );
}

/// An HTTP/1.0 client gets an `HTTP/1.0` status line (as from Envoy) and never a transfer
/// coding (RFC 9112 §6.1): a length-less or chunked upstream body comes close-delimited
/// (before the fix: `transfer-encoding: chunked` to a 1.0 client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_client_gets_no_transfer_coding() {
    let mesh = mesh().await;
    for (extra, want) in [
        ("x-http10: close\r\n", None),
        ("x-response-chunks: 3\r\n", Some("xxx")),
    ] {
        let mut t = open(&mesh).await;
        t.send(format!("GET /old HTTP/1.0\r\nhost: reviews:9080\r\n{extra}\r\n").as_bytes())
            .await;
        let r = t.next(false).await.expect("a response");
        assert_eq!(r.status_line, "HTTP/1.0 200 OK", "{r:?}");
        assert_eq!(r.header("transfer-encoding"), None, "{r:?}");
        assert_eq!(r.header("connection"), Some("close"), "{r:?}");
        match want {
            Some(body) => assert_eq!(r.body, body.as_bytes()),
            None => assert_eq!(r.echoed_path(), "/old"),
        }
        assert!(t.closed().await);
    }
}

/// Three pipelined requests (one with a chunked body, one with a content-length body) in one
/// write, then twenty: every one answered, in order, on one tunnel, bodies intact (before the
/// fix: only the first answered, then the tunnel closed). A request sent while the previous one
/// is still upstream is answered after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let mesh = mesh().await;
    let app = mesh.app("reviews-v1");
    let mut t = open(&mesh).await;
    let three = get("/p/1", "")
        + "POST /p/2 HTTP/1.1\r\nhost: reviews:9080\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        + "POST /p/3 HTTP/1.1\r\nhost: reviews:9080\r\ncontent-length: 5\r\n\r\nhello";
    t.send(three.as_bytes()).await;
    for i in 1..=3 {
        let r = t
            .next(false)
            .await
            .unwrap_or_else(|| panic!("response {i}"));
        assert_eq!(r.status_line, "HTTP/1.1 200 OK");
        assert_eq!(r.echoed_path(), format!("/p/{i}"));
    }
    assert_eq!(app.last_body.lock().as_deref(), Some(&b"hello"[..]));

    let mut twenty = String::new();
    for i in 0..20 {
        twenty += &if i % 2 == 0 {
            get(&format!("/q/{i}"), "")
        } else {
            format!(
                "POST /q/{i} HTTP/1.1\r\nhost: reviews:9080\r\ncontent-length: 4\r\n\r\nb{i:03}"
            )
        };
    }
    t.send(twenty.as_bytes()).await;
    for i in 0..20 {
        let r = t
            .next(false)
            .await
            .unwrap_or_else(|| panic!("response {i}"));
        assert_eq!(r.status_line, "HTTP/1.1 200 OK");
        assert_eq!(r.echoed_path(), format!("/q/{i}"));
    }
    assert_eq!(app.last_body.lock().as_deref(), Some(&b"b019"[..]));
    assert_eq!(app.stats.requests.load(Ordering::Relaxed), 23);

    // The next request arrives while the previous one waits upstream.
    t.send(get("/slow", "x-delay-ms: 300\r\n").as_bytes()).await;
    let deadline = Instant::now() + READ_LIMIT;
    while app.stats.requests.load(Ordering::Relaxed) < 24 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.send(get("/fast", "").as_bytes()).await;
    assert_eq!(t.next(false).await.unwrap().echoed_path(), "/slow");
    assert_eq!(t.next(false).await.unwrap().echoed_path(), "/fast");

    let log = mesh.wait_for_log_lines(25).await;
    assert_eq!(log.len(), 25);
    assert!(log.iter().all(|l| l["protocol"] == "HTTP/1.1"), "{log:?}");
}

/// Smuggling inside a pipeline: the request behind a valid one is framed exactly as a first
/// request would be. Conflicting lengths or a malformed request get 400 and the tunnel closes;
/// Content-Length with Transfer-Encoding is framed by the chunked coding and the tunnel closes
/// after its answer (RFC 9112 §6.1); nothing after `connection: close` is served (§9.6). In
/// every case the request hidden behind reaches no app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_inside_a_pipeline_is_refused() {
    let mesh = mesh().await;
    let app = mesh.app("reviews-v1");
    let hidden = get("/smuggled", "");
    let cases: [(&str, String, &str); 5] = [
        (
            "duplicate content-length",
            format!("POST /cl HTTP/1.1\r\nhost: reviews:9080\r\ncontent-length: 3\r\ncontent-length: 40\r\n\r\nabc{hidden}"),
            "400",
        ),
        (
            "content-length with transfer-encoding",
            format!("POST /te HTTP/1.1\r\nhost: reviews:9080\r\ncontent-length: 40\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"),
            "200",
        ),
        (
            "transfer-encoding not ending in chunked",
            format!("POST /te2 HTTP/1.1\r\nhost: reviews:9080\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n{hidden}"),
            "400",
        ),
        (
            "malformed header line",
            format!("GET /bad HTTP/1.1\r\nhost: reviews:9080\r\nno colon here\r\n\r\n{hidden}"),
            "400",
        ),
        (
            "after connection: close",
            format!("GET /last HTTP/1.1\r\nhost: reviews:9080\r\nconnection: close\r\n\r\n{hidden}"),
            "200",
        ),
    ];
    for (name, second, status) in cases {
        let before = app.stats.requests.load(Ordering::Relaxed);
        let mut t = open(&mesh).await;
        t.send((get("/ok", "") + &second).as_bytes()).await;
        let first = t.next(false).await.expect("the first request is answered");
        assert_eq!(first.echoed_path(), "/ok", "{name}");
        let answer = t.next(false).await.expect("the second request is answered");
        assert!(
            answer
                .status_line
                .starts_with(&format!("HTTP/1.1 {status}")),
            "{name}: {answer:?}"
        );
        if status == "200" {
            assert_eq!(
                answer.header("connection"),
                Some("close"),
                "{name}: {answer:?}"
            );
            assert_ne!(answer.echoed_path(), "/smuggled", "{name}");
        }
        assert!(t.closed().await, "{name}: the tunnel closes");
        let served = app.stats.requests.load(Ordering::Relaxed) - before;
        let want = if status == "200" { 2 } else { 1 };
        assert_eq!(served, want, "{name}: requests the app saw");
    }
}

//! Helpers shared by the tests that run the real `waypoint` binary.
#![allow(dead_code)] // each test module uses its own subset

pub mod collector;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use waypoint::control::identity::Ca;
use waypoint_tests::{service_yaml, sim, spiffe, workload_yaml, Net};

/// Cargo builds the package's binary before its integration tests and names it here.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_waypoint"))
}

/// `--cert-chain … --key … --trust-bundle …` for files written by `MintedCert::write_to`.
pub fn cert_args(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
    let files = [
        ("--cert-chain", "cert-chain.pem"),
        ("--key", "key.pem"),
        ("--trust-bundle", "root-cert.pem"),
    ];
    let mut args = Vec::new();
    for (flag, file) in files {
        args.push(flag.into());
        args.push(dir.join(file).into());
    }
    args
}

/// Admin, stats and health endpoints on ports the OS picks (tests run in parallel).
pub const QUIET_PORTS: [&str; 6] = [
    "--admin-listen",
    "127.0.0.1:0",
    "--stats-listen",
    "127.0.0.1:0",
    "--health-listen",
    "127.0.0.1:0",
];

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("waypoint-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// ratings-v1 at @1: the app on :9080 and its node's HBONE terminator on :15008.
pub struct Pod {
    pub app: sim::AppHandle,
    pub pod: sim::PodHandle,
}

impl Pod {
    /// Requests the app has received.
    pub fn requests(&self) -> u64 {
        self.app
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn start(net: &Net, ca: &Ca) -> Self {
        Self::start_at(net, ca, 1, "ratings-v1").await
    }

    /// A ratings pod named `name` at `@host` (app on :9080, HBONE on :15008).
    pub async fn start_at(net: &Net, ca: &Ca, host: u8, name: &str) -> Self {
        Self::start_as(net, ca, host, name, "bookinfo-ratings").await
    }

    /// A pod named `name` at `@host` with service account `sa`.
    pub async fn start_as(net: &Net, ca: &Ca, host: u8, name: &str, sa: &str) -> Self {
        let app = sim::start_app(
            SocketAddr::new(net.ip(host), 9080),
            name,
            sim::AppKind::Http,
        )
        .await
        .unwrap();
        let cert = ca.issue(&spiffe(sa)).unwrap();
        let pod = sim::start_pod(SocketAddr::new(net.ip(host), 15008), &cert.workload)
            .await
            .unwrap();
        Self { app, pod }
    }
}

pub fn write_ratings_config(net: &Net, dir: &std::path::Path) {
    let yaml = service_yaml("ratings", "10.0.0.20", 9080, "http")
        + &workload_yaml("ratings-v1", "@1", "ratings", "v1", "bookinfo-ratings");
    std::fs::write(dir.join("ratings.yaml"), net.render(&yaml)).unwrap();
}

/// A ztunnel-like client (as productpage) with an HTTP/1.1 tunnel to the ratings VIP.
pub async fn client(ca: &Ca, waypoint: SocketAddr) -> sim::Http1 {
    client_to(ca, waypoint, &spiffe("waypoint"), "10.0.0.20:9080").await
}

/// A tunnel from productpage (as its ztunnel would open it) through the waypoint `waypoint_id`
/// at `waypoint` to `dst` (a VIP:port).
pub async fn client_to(
    ca: &Ca,
    waypoint: SocketAddr,
    waypoint_id: &waypoint::control::identity::SpiffeId,
    dst: &str,
) -> sim::Http1 {
    sim::ZtunnelClient::new(
        ca.issue(&spiffe("productpage")).unwrap().workload,
        waypoint,
        waypoint_id.clone(),
    )
    .http1(dst.parse().unwrap())
    .await
    .unwrap()
}

/// `waypoint run` on `config` and `certs` with JSON access logs and OS-chosen ports. Returns the
/// child, the addresses it announced on stderr ("hbone", "admin", "stats", "health") and the rest
/// of its stderr.
pub fn spawn_run(
    config: &std::path::Path,
    certs: &std::path::Path,
) -> (
    Waypoint,
    std::collections::HashMap<String, SocketAddr>,
    BufReader<std::process::ChildStderr>,
) {
    spawn_run_with(config, &cert_args(certs))
}

/// `waypoint run` on `config` with `identity_args` (certificate flags) and the settings of
/// [`spawn_run`].
pub fn spawn_run_with(
    config: &std::path::Path,
    identity_args: &[std::ffi::OsString],
) -> (
    Waypoint,
    std::collections::HashMap<String, SocketAddr>,
    BufReader<std::process::ChildStderr>,
) {
    let mut cmd = Command::new(binary());
    cmd.args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .args(identity_args)
        .args([
            "--access-log-format",
            "json",
            "--drain-seconds",
            "2",
            "--log",
            "info",
        ])
        .args(QUIET_PORTS);
    spawn_announcing(&mut cmd, 4)
}

/// Start `cmd` with piped stdout/stderr and read stderr until it has announced `listeners`
/// addresses ("waypoint [<what>] listening on <addr>"; the HBONE one is named "hbone").
pub fn spawn_announcing(
    cmd: &mut Command,
    listeners: usize,
) -> (
    Waypoint,
    std::collections::HashMap<String, SocketAddr>,
    BufReader<std::process::ChildStderr>,
) {
    let mut child = Waypoint(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addrs = std::collections::HashMap::new();
    while addrs.len() < listeners {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "waypoint exited before listening"
        );
        let Some(rest) = line.trim().strip_prefix("waypoint ") else {
            continue;
        };
        let (what, addr) = match rest.strip_prefix("listening on ") {
            Some(addr) => ("hbone", addr),
            None => match rest.split_once(" listening on ") {
                Some(found) => found,
                None => continue,
            },
        };
        addrs.insert(what.to_string(), addr.parse::<SocketAddr>().unwrap());
    }
    (child, addrs, stderr)
}

/// SIGTERM, then the process must exit 0 within 20 s.
pub async fn sigterm_and_wait(child: Waypoint) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_for_exit(child).await;
    assert!(exit.success(), "exit status after SIGTERM: {exit:?}");
}

/// The process's exit status, within 20 s (its drain included).
pub async fn wait_for_exit(mut child: Waypoint) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waypoint did not exit within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn ok_request(send: &mut sim::Http1, id: &str) {
    let (parts, _) = sim::get(send, "ratings:9080", "/ratings/1", &[("x-request-id", id)])
        .await
        .unwrap();
    assert_eq!(parts.status, 200);
}

/// Lines a child process writes, collected by a thread.
pub fn collect(
    reader: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Poll `path` on `addr` until `done(status, body)` (bounded: 10 s).
pub async fn poll_until(
    addr: SocketAddr,
    path: &str,
    done: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = waypoint_tests::http_request(addr, "GET", path).await;
        if done(status, &body) {
            return (status, body);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never reached the expected state; last: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running `waypoint` process, killed if the test ends (or panics) before it exited.
pub struct Waypoint(pub std::process::Child);

impl std::ops::Deref for Waypoint {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Waypoint {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Waypoint {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The istiod side of a live xDS test: a test mesh CA that issued the waypoint's certificate
/// (in `dir`), an in-test ADS server asking for istiod's bearer `token`, and istiod's root and
/// the token written in `dir` where [`waypoint_tests::xds_run_command`] points the waypoint.
pub struct Istiod {
    pub ca: waypoint::control::identity::Ca,
    pub dir: PathBuf,
    pub pki: xds_client::testing::TestPki,
    pub server: xds_client::testing::AdsServer,
}

impl Istiod {
    pub async fn start(mesh: &str, tag: &str, token: &str) -> Istiod {
        let ca = waypoint::control::identity::Ca::new(mesh).unwrap();
        let dir = temp_dir(tag);
        ca.issue(&waypoint_tests::spiffe("waypoint"))
            .unwrap()
            .write_to(&dir)
            .unwrap();
        let pki = xds_client::testing::TestPki::new();
        let server = xds_client::testing::AdsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            &pki,
            xds_client::testing::AdsServerOptions::with_token(token),
        )
        .await
        .unwrap();
        std::fs::write(dir.join("istiod-root.pem"), pki.root_pem()).unwrap();
        std::fs::write(dir.join("token"), token).unwrap();
        Istiod {
            ca,
            dir,
            pki,
            server,
        }
    }
}

/// The JSON access log line for `authority` among `access`'s lines (bounded wait).
pub async fn access_line(
    access: &std::sync::Mutex<Vec<String>>,
    authority: &str,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let found = access.lock().unwrap().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["authority"] == authority).then_some(v)
        });
        if let Some(v) = found {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access log line for {authority}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The process's resident set, in KiB (`VmRSS` of /proc/PID/status; 0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS").unwrap_or(0)
}

/// Field `name` of /proc/PID/status (`VmRSS`, `VmHWM`, `RssAnon`, …), in KiB; `None` when the
/// process or the field is not there.
pub fn status_kib(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One sample of a metric family with `labels` from the stats port (0 when absent).
pub async fn sample(stats: SocketAddr, family: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = waypoint_tests::scrape(stats).await;
    scrape
        .samples(family, labels)
        .first()
        .map(|_| scrape.value(family, labels))
        .unwrap_or(0.0)
}

/// Slow readers: one HBONE connection (as productpage) whose HTTP/2 windows start at zero and
/// are never reopened; each tunnel on it asks ratings for a large response it never reads.
pub struct SlowReaders {
    send: h2::client::SendRequest<bytes::Bytes>,
    /// The tunnels opened, both halves held (dropping them would cancel the stream).
    pub held: Vec<(http::Response<h2::RecvStream>, h2::SendStream<bytes::Bytes>)>,
}

impl SlowReaders {
    pub async fn connect(
        ca: &Ca,
        hbone: SocketAddr,
        waypoint_id: &waypoint::control::identity::SpiffeId,
    ) -> Self {
        let send = hbone_connection(ca, hbone, waypoint_id, 0).await;
        Self {
            send,
            held: Vec::new(),
        }
    }

    /// One more tunnel to ratings asking for `bytes` of response. Returns the CONNECT's status;
    /// only a tunnel answered 200 sends its request and is held.
    pub async fn open(&mut self, bytes: usize) -> http::StatusCode {
        let request =
            format!("GET / HTTP/1.1\r\nhost: ratings:9080\r\nx-response-bytes: {bytes}\r\n\r\n");
        self.open_to("10.0.0.20:9080", Some(request.into())).await
    }

    /// One more tunnel to `dst`; when answered 200 it sends `first` (if any) and is held.
    pub async fn open_to(&mut self, dst: &str, first: Option<bytes::Bytes>) -> http::StatusCode {
        let (response, stream) = open_tunnel(&self.send, dst, first).await;
        let status = response.status();
        if status == http::StatusCode::OK {
            self.held.push((response, stream));
        }
        status
    }
}

/// One HBONE connection to the waypoint at `hbone` as productpage's ztunnel, with an initial
/// stream window of `window` bytes.
pub async fn hbone_connection(
    ca: &Ca,
    hbone: SocketAddr,
    waypoint_id: &waypoint::control::identity::SpiffeId,
    window: u32,
) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(hbone).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(waypoint_tests::client_tls(
        ca.issue(&spiffe("productpage")).unwrap().workload,
        waypoint_id,
    ))
    .connect(
        rustls::pki_types::ServerName::IpAddress(hbone.ip().into()),
        tcp,
    )
    .await
    .unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A CONNECT tunnel to `dst` on `send`; when answered 200 it sends `first` (if any).
pub async fn open_tunnel(
    send: &h2::client::SendRequest<bytes::Bytes>,
    dst: &str,
    first: Option<bytes::Bytes>,
) -> (http::Response<h2::RecvStream>, h2::SendStream<bytes::Bytes>) {
    let mut send = send.clone().ready().await.unwrap();
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(dst)
        .body(())
        .unwrap();
    let (response, mut stream) = send.send_request(req, false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("CONNECT answered")
        .unwrap();
    if response.status() == http::StatusCode::OK {
        if let Some(first) = first {
            stream.send_data(first, false).unwrap();
        }
    }
    (response, stream)
}

/// The nice values of process `pid`'s threads named `comm` (from `/proc/<pid>/task/*/stat`).
pub fn thread_nice(pid: u32, comm: &str) -> Vec<i64> {
    let tasks = format!("/proc/{pid}/task");
    std::fs::read_dir(&tasks)
        .expect("the process's threads")
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            (name.trim() == comm).then_some(())?;
            // Field 19 of stat is the nice value; fields count after the `(comm)`.
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().nth(16)?.parse().ok()
        })
        .collect()
}

/// `line` without terminal colour codes (`ESC [ … m`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

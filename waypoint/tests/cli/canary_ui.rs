//! The live canary page in a real browser: `waypoint demo --ui` serves it while traffic flows,
//! headless Chromium (Debian's `chromium` package) loads it, runs its script and the test reads
//! the rendered chart and numbers from the DOM. The same run takes the screenshot in
//! `docs/canary-ui.png` (written there when `WAYPOINT_UPDATE_SCREENSHOT` is set).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The browser: `WAYPOINT_TEST_CHROMIUM`, else `chromium` (Debian) or `chromium-browser` on
/// the PATH. The CI installs Debian's package; without one the test fails saying so.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("WAYPOINT_TEST_CHROMIUM") {
        return p.into();
    }
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "the canary page test needs a headless Chromium: apt-get install chromium \
         (or set WAYPOINT_TEST_CHROMIUM)"
    );
}

/// Headless Chromium on `url` with `args`, its script given 4 s of virtual time; stdout.
fn browse(url: &str, args: &[&str]) -> String {
    let profile = temp_dir("canary-ui-chromium");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("running chromium");
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the first element after `from` that carries `marker` (e.g. `class="observed"`).
fn cell<'a>(dom: &'a str, from: &str, marker: &str) -> &'a str {
    let start = dom
        .find(from)
        .unwrap_or_else(|| panic!("{from} not in the page:\n{dom}"));
    let rest = &dom[start..];
    let at = rest
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} after {from}"));
    let text = &rest[at..];
    let open = text.find('>').unwrap() + 1;
    let close = text[open..].find('<').unwrap() + open;
    &text[open..close]
}

fn percent(s: &str) -> f64 {
    s.trim_end_matches('%')
        .parse()
        .unwrap_or_else(|_| panic!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_page_renders_the_live_split_in_a_browser() {
    let mut child = Waypoint(
        Command::new(binary())
            .args(["demo", "-n", "300", "--ui", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "demo ended early");
        if let Some(rest) = line.trim().strip_prefix("canary page: ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in out.lines() {});
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/ui")
        .parse()
        .unwrap();

    // Ready when the chart has two points per destination (two 2-second buckets of traffic);
    // for the docs' screenshot, a line of twelve.
    let update = std::env::var_os("WAYPOINT_UPDATE_SCREENSHOT").is_some();
    let want = if update { 12 } else { 2 };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = waypoint_tests::http_request(addr, "GET", "/ui/data").await;
        let data: serde_json::Value = serde_json::from_str(&body).unwrap();
        let points = |d: &serde_json::Value| {
            d["series"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| !p.is_null())
                .count()
        };
        let dests = data["splits"]["routes"][0]["destinations"].as_array();
        if dests.is_some_and(|ds| ds.len() == 2 && ds.iter().all(|d| points(d) >= want)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no two points of traffic: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let dom = browse(&url, &["--dump-dom"]);
    // The header: the config the page describes.
    assert_eq!(cell(&dom, "id=\"meta\"", "id=\"version\""), "version 1");
    assert_eq!(cell(&dom, "id=\"meta\"", "id=\"rejection\""), "none");
    // Per destination of reviews' 90/10 route: the configured weight (dashed) and the
    // observed share over time (a polyline of at least two points), and the table's numbers.
    assert!(
        dom.contains("reviews.default.svc.cluster.local · reviews.0"),
        "{dom}"
    );
    for (subset, configured) in [("v1", 90.0), ("v2", 10.0)] {
        let row = format!("<tr data-destination=\"{subset}\">");
        assert_eq!(
            percent(cell(&dom, &row, "class=\"configured\"")),
            configured
        );
        let observed = percent(cell(&dom, &row, "class=\"observed\""));
        assert!(
            (observed - configured).abs() < 10.0,
            "{subset}: {observed}%"
        );
        let rate: f64 = cell(&dom, &row, "class=\"rate\"").parse().unwrap();
        assert!(rate > 0.0, "{subset}: {rate} req/s");
        assert_eq!(cell(&dom, &row, "class=\"errors\""), "0.0%");
        assert_ne!(cell(&dom, &row, "class=\"p99\""), "-");
        let line = format!("class=\"observed\" data-destination=\"{subset}\"");
        let at = dom
            .find(&line)
            .unwrap_or_else(|| panic!("no {subset} line:\n{dom}"));
        let start = dom[..at].rfind("<polyline").unwrap();
        let points = dom[start..at]
            .split("points=\"")
            .nth(1)
            .and_then(|p| p.split('"').next())
            .unwrap();
        assert!(points.split_whitespace().count() >= 2, "{subset}: {points}");
        assert!(dom.contains(&format!(
            "class=\"configured\" data-destination=\"{subset}\""
        )));
    }

    // The screenshot the docs show, from the same page.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("canary-ui.png");
    browse(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=760,520",
        ],
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    if update {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/canary-ui.png");
        std::fs::copy(&shot, docs).unwrap();
    }
    sigterm_and_wait(child).await;
}

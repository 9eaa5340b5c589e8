//! `ports_bench`: what an idle-connection flood of the stats port costs a `waypoint run` process
//! that has few file descriptors (docs/hardening.md, "Ports"). A program that prints numbers, not
//! a test.
//!
//! It starts the binary given by `--binary` under `ulimit -n --fds` (certificate and config
//! minted here, every listener on 127.0.0.1), waits for readiness, opens `--connections` TCP
//! connections to the stats port that send nothing, and then for `--seconds` probes once a
//! second: `/healthz/ready` on the health port, and a complete mTLS handshake on the HBONE port
//! (each probe with a 3 s limit). It reports the waypoint's CPU time over the flood, the probes
//! answered, how many of the idle connections the waypoint closed, and the stderr lines written.
//! Everything is on loopback; the process is killed at the end.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use waypoint::control::identity::Ca;
use waypoint_tests::spiffe;

#[derive(Parser)]
struct Args {
    /// The `waypoint` binary to run.
    #[arg(long)]
    binary: PathBuf,
    /// File-descriptor limit of the waypoint process.
    #[arg(long, default_value_t = 1024)]
    fds: u32,
    /// Idle connections opened to the stats port.
    #[arg(long, default_value_t = 1100)]
    connections: usize,
    /// How long the flood is held and probed.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Further `waypoint run` flags.
    #[arg(last = true)]
    extra: Vec<String>,
}

fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let Some(end) = stat.rfind(')') else {
        return Duration::ZERO;
    };
    let ticks: u64 = stat[end + 2..]
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// `GET /healthz/ready`: the status, or `None` if no answer came within 3 s.
async fn ready(addr: SocketAddr) -> Option<u16> {
    tokio::time::timeout(Duration::from_secs(3), async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        tcp.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.ok()?;
        String::from_utf8_lossy(&raw)
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    })
    .await
    .ok()
    .flatten()
}

/// A complete mTLS handshake with the HBONE listener within 3 s.
async fn handshake(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    tokio::time::timeout(Duration::from_secs(3), async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .ok()
    })
    .await
    .ok()
    .flatten()
    .is_some()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("ports-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (certs, config) = (dir.join("certs"), dir.join("config"));
    std::fs::create_dir_all(&certs)?;
    std::fs::create_dir_all(&config)?;
    let ca = Ca::new("ports bench mesh")?;
    ca.issue(&spiffe("waypoint"))?.write_to(&certs)?;
    std::fs::write(
        config.join("ratings.yaml"),
        waypoint_tests::service_yaml("ratings", "10.0.0.20", 9080, "http"),
    )?;

    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        &format!("ulimit -n {} && exec \"$0\" \"$@\"", args.fds),
    ])
    .arg(&args.binary)
    .args(["run", "--listen", "127.0.0.1:0", "--config"])
    .arg(&config)
    .args(
        ["--cert-chain", "--key", "--trust-bundle"]
            .iter()
            .zip(["cert-chain.pem", "key.pem", "root-cert.pem"])
            .flat_map(|(flag, file)| [flag.to_string(), certs.join(file).display().to_string()]),
    )
    .args([
        "--admin-listen",
        "127.0.0.1:0",
        "--stats-listen",
        "127.0.0.1:0",
        "--health-listen",
        "127.0.0.1:0",
        "--log",
        "info",
    ])
    .args(&args.extra)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting the waypoint")?;
    let pid = child.id();
    let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
    let mut addrs = std::collections::HashMap::new();
    while addrs.len() < 4 {
        let mut line = String::new();
        if stderr.read_line(&mut line)? == 0 {
            bail!("the waypoint exited before listening");
        }
        if let Some(rest) = line.trim().strip_prefix("waypoint ") {
            let (what, addr) = match rest.strip_prefix("listening on ") {
                Some(addr) => ("hbone", addr),
                None => match rest.split_once(" listening on ") {
                    Some(found) => found,
                    None => continue,
                },
            };
            addrs.insert(what.to_string(), addr.parse::<SocketAddr>()?);
        }
    }
    let lines = Arc::new(AtomicU64::new(0));
    let counted = lines.clone();
    std::thread::spawn(move || {
        for _ in stderr.lines().map_while(Result::ok) {
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    let (stats, health, hbone) = (addrs["stats"], addrs["health"], addrs["hbone"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready(health).await != Some(200) {
        if Instant::now() > deadline {
            bail!("the waypoint did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tls = waypoint_tests::client_tls(ca.issue(&spiffe("probe"))?.workload, &spiffe("waypoint"));
    println!(
        "binary {} | fds {} | idle connections {} | {} s | extra flags {:?}",
        args.binary.display(),
        args.fds,
        args.connections,
        args.seconds,
        args.extra
    );

    let (cpu0, lines0, t0) = (cpu_time(pid), lines.load(Ordering::Relaxed), Instant::now());
    let mut idle = Vec::new();
    for _ in 0..args.connections {
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(stats)).await {
            Ok(Ok(c)) => idle.push(c),
            _ => break,
        }
    }
    let opened = idle.len();
    let (mut ready_ok, mut ready_slowest, mut tls_ok, mut probes) = (0, Duration::ZERO, 0, 0);
    while t0.elapsed() < Duration::from_secs(args.seconds) {
        let started = Instant::now();
        probes += 1;
        if ready(health).await == Some(200) {
            ready_ok += 1;
            ready_slowest = ready_slowest.max(started.elapsed());
        }
        if handshake(hbone, tls.clone()).await {
            tls_ok += 1;
        }
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;
    }
    let (cpu, wall) = (cpu_time(pid) - cpu0, t0.elapsed());
    // Which idle connections the waypoint closed: a read that ends at once.
    let mut closed = 0;
    for c in &mut idle {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), c.read(&mut b)).await
        {
            closed += 1;
        }
    }
    println!(
        "opened {opened} | closed by the waypoint {closed} | CPU {:.2} s in {:.1} s ({:.0} % of a core) | \
         readiness answered {ready_ok}/{probes} (slowest {:?}) | HBONE mTLS handshakes {tls_ok}/{probes} | \
         stderr lines {}",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        ready_slowest,
        lines.load(Ordering::Relaxed) - lines0,
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

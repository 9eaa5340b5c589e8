//! `hbone_hop`: the L4 reference for `datapath_bench` (docs/benchmarks.md, issue 14), two lean
//! HBONE hops in the shape of ztunnel's data path, each run as its own process:
//!
//! - `originate` (ztunnel's outbound): accepts plain TCP on one listener per route and opens an
//!   mTLS HTTP/2 `CONNECT target` stream per connection to the route's next hop, checking the
//!   next hop's SPIFFE id. Streams multiplex over pooled HTTP/2 connections, a new connection
//!   being opened only when every pooled one carries `--max-streams` (ztunnel's pool: 100).
//! - `terminate` (ztunnel's inbound): accepts HBONE (mTLS, client certificate of the mesh's
//!   trust domain required), dials the `CONNECT` authority and copies bytes.
//!
//! The copy loops move `Bytes` between the socket and h2 without an extra copy: a socket read
//! fills a `BytesMut` that is frozen and handed to h2 (sent as flow control allows); h2's
//! received chunks are written to the socket and their window released once written. No
//! logging, metrics or policy on the path: the floor an L7 hop is compared with.
//!
//! Each process announces its listeners on stderr (`hop <name> listening on <addr>`); the
//! `stats` listener answers each connection with one line of counters and closes it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use clap::{Parser, Subcommand};
use h2::{RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use waypoint::control::identity::{
    install_crypto_provider, server_config, ClientConfigs, PeerCheck,
};
use waypoint::control::identity::{SpiffeId, WorkloadCert};

#[derive(Parser, Debug)]
#[command(about = "Lean HBONE hops (ztunnel-like outbound and inbound) for datapath_bench")]
struct Args {
    /// Directory holding cert-chain.pem, key.pem and root-cert.pem (this hop's identity).
    #[arg(long)]
    certs: PathBuf,
    /// Counters on request: each connection gets one line and is closed.
    #[arg(long, default_value = "127.0.0.1:0")]
    stats_listen: SocketAddr,
    /// Tokio worker threads (ztunnel's default is 2).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Plain TCP in, one HBONE CONNECT stream out per connection.
    Originate {
        /// `NAME=LISTEN,NEXT_HOP,NEXT_HOP_SPIFFE_ID,CONNECT_TARGET`, e.g.
        /// `l4=127.0.0.1:0,127.0.5.1:41000,spiffe://cluster.local/ns/default/sa/reviews,127.0.5.1:9080`.
        #[arg(long = "route", required = true, value_parser = parse_route)]
        routes: Vec<Route>,
        /// Streams per pooled HTTP/2 connection before another one is opened.
        #[arg(long, default_value_t = 100)]
        max_streams: usize,
    },
    /// HBONE in, plain TCP to the CONNECT authority out.
    Terminate {
        #[arg(long, default_value = "127.0.0.1:15008")]
        listen: SocketAddr,
    },
}

#[derive(Debug, Clone)]
struct Route {
    name: String,
    listen: SocketAddr,
    next_hop: SocketAddr,
    peer: SpiffeId,
    target: String,
}

fn parse_route(s: &str) -> Result<Route, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("route {s:?}: expected NAME=LISTEN,NEXT_HOP,SPIFFE_ID,TARGET"))?;
    let parts: Vec<&str> = rest.split(',').collect();
    let [listen, next_hop, peer, target] = parts[..] else {
        return Err(format!(
            "route {s:?}: expected 4 comma-separated fields after '='"
        ));
    };
    let addr = |what: &str, v: &str| {
        v.parse::<SocketAddr>()
            .map_err(|e| format!("route {name}: {what} {v:?}: {e}"))
    };
    target
        .parse::<SocketAddr>()
        .map_err(|e| format!("route {name}: target {target:?}: {e}"))?;
    Ok(Route {
        name: name.to_string(),
        listen: addr("listen", listen)?,
        next_hop: addr("next hop", next_hop)?,
        peer: peer
            .parse()
            .map_err(|e| format!("route {name}: next hop identity {peer:?}: {e}"))?,
        target: target.to_string(),
    })
}

/// What the stats listener reports.
#[derive(Default)]
struct Counters {
    /// HTTP/2 connections opened (originate) or accepted (terminate).
    h2_connections: AtomicU64,
    /// CONNECT streams opened (originate) or accepted with 200 (terminate).
    tunnels: AtomicU64,
    /// Streams that failed before their 200.
    failed: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    install_crypto_provider();
    let cert = WorkloadCert::from_files(
        &args.certs.join("cert-chain.pem"),
        &args.certs.join("key.pem"),
        &args.certs.join("root-cert.pem"),
    )
    .with_context(|| format!("reading the identity in {}", args.certs.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let counters = Arc::new(Counters::default());
        serve_stats(args.stats_listen, counters.clone()).await?;
        match args.mode {
            Mode::Originate {
                routes,
                max_streams,
            } => originate(cert, routes, max_streams.max(1), counters).await,
            Mode::Terminate { listen } => terminate(cert, listen, counters).await,
        }
    })
}

async fn serve_stats(addr: SocketAddr, counters: Arc<Counters>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the stats listener {addr}"))?;
    eprintln!("hop stats listening on {}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let line = format!(
                "h2_connections={} tunnels={} failed={}\n",
                counters.h2_connections.load(Ordering::Relaxed),
                counters.tunnels.load(Ordering::Relaxed),
                counters.failed.load(Ordering::Relaxed)
            );
            let _ = tcp.write_all(line.as_bytes()).await;
        }
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Originate
// ---------------------------------------------------------------------------------------------

/// One pooled HTTP/2 connection to a next hop and the streams it carries now.
struct Pooled {
    send: h2::client::SendRequest<Bytes>,
    streams: Arc<AtomicUsize>,
}

/// Decrements a pooled connection's stream count when its stream ends.
struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Pool {
    route: Route,
    connector: TlsConnector,
    max_streams: usize,
    conns: tokio::sync::Mutex<Vec<Pooled>>,
    counters: Arc<Counters>,
}

impl Pool {
    /// A connection with room for one more stream (opening one when none has), the stream
    /// already counted.
    async fn checkout(&self) -> anyhow::Result<(h2::client::SendRequest<Bytes>, StreamGuard)> {
        let mut conns = self.conns.lock().await;
        conns.retain(|c| !is_closed(&c.send));
        if let Some(c) = conns
            .iter()
            .find(|c| c.streams.load(Ordering::Relaxed) < self.max_streams)
        {
            c.streams.fetch_add(1, Ordering::Relaxed);
            return Ok((c.send.clone(), StreamGuard(c.streams.clone())));
        }
        let tcp = TcpStream::connect(self.route.next_hop)
            .await
            .with_context(|| format!("connecting to {}", self.route.next_hop))?;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::IpAddress(self.route.next_hop.ip().into());
        let tls = self.connector.connect(name, tcp).await?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_frame_size(1 << 20)
            .handshake(tls)
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.counters.h2_connections.fetch_add(1, Ordering::Relaxed);
        let streams = Arc::new(AtomicUsize::new(1));
        conns.push(Pooled {
            send: send.clone(),
            streams: streams.clone(),
        });
        Ok((send, StreamGuard(streams)))
    }
}

/// A connection h2 has given up on (GOAWAY or I/O error): `poll_ready` fails at once.
fn is_closed(send: &h2::client::SendRequest<Bytes>) -> bool {
    let mut s = send.clone();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    matches!(s.poll_ready(&mut cx), std::task::Poll::Ready(Err(_)))
}

async fn originate(
    cert: WorkloadCert,
    routes: Vec<Route>,
    max_streams: usize,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let configs = ClientConfigs::new(cert);
    let mut tasks = Vec::new();
    for route in routes {
        let tls = configs.for_peer(&PeerCheck::from(route.peer.clone()))?;
        let listener = TcpListener::bind(route.listen)
            .await
            .with_context(|| format!("route {}: binding {}", route.name, route.listen))?;
        eprintln!("hop {} listening on {}", route.name, listener.local_addr()?);
        let pool = Arc::new(Pool {
            route,
            connector: TlsConnector::from(tls),
            max_streams,
            conns: tokio::sync::Mutex::new(Vec::new()),
            counters: counters.clone(),
        });
        tasks.push(tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let pool = pool.clone();
                tokio::spawn(async move {
                    if outbound(&pool, tcp).await.is_err() {
                        pool.counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

async fn outbound(pool: &Pool, tcp: TcpStream) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let (send, guard) = pool.checkout().await?;
    let mut send = send.ready().await?;
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(pool.route.target.as_str())
        .body(())?;
    let (resp, tx) = send.send_request(req, false)?;
    pool.counters.tunnels.fetch_add(1, Ordering::Relaxed);
    let resp = resp.await?;
    if resp.status() != StatusCode::OK {
        bail!("CONNECT answered {}", resp.status());
    }
    let rx = resp.into_body();
    splice(tcp, tx, rx).await;
    drop(guard);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Terminate
// ---------------------------------------------------------------------------------------------

async fn terminate(
    cert: WorkloadCert,
    listen: SocketAddr,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let tls = server_config(&cert, std::slice::from_ref(&cert.id.trust_domain))?;
    let acceptor = TlsAcceptor::from(tls);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    eprintln!("hop hbone listening on {}", listener.local_addr()?);
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let (acceptor, counters) = (acceptor.clone(), counters.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let Ok(mut conn) = h2::server::Builder::new()
                .initial_window_size(4 << 20)
                .initial_connection_window_size(16 << 20)
                .max_frame_size(1 << 20)
                .max_concurrent_streams(1000)
                .handshake::<_, Bytes>(tls)
                .await
            else {
                return;
            };
            counters.h2_connections.fetch_add(1, Ordering::Relaxed);
            while let Some(Ok((req, respond))) = conn.accept().await {
                let counters = counters.clone();
                tokio::spawn(async move {
                    if inbound(req, respond, &counters).await.is_err() {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
    }
    Ok(())
}

async fn inbound(
    req: Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    counters: &Counters,
) -> anyhow::Result<()> {
    let status = |s: StatusCode| Response::builder().status(s).body(()).expect("static");
    let target = match req.method() {
        &Method::CONNECT => req
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok()),
        _ => None,
    };
    let Some(target) = target else {
        respond.send_response(status(StatusCode::BAD_REQUEST), true)?;
        bail!("not a CONNECT to ip:port");
    };
    let tcp = match TcpStream::connect(target).await {
        Ok(t) => t,
        Err(e) => {
            respond.send_response(status(StatusCode::SERVICE_UNAVAILABLE), true)?;
            bail!("dialling {target}: {e}");
        }
    };
    tcp.set_nodelay(true)?;
    let tx = respond.send_response(status(StatusCode::OK), false)?;
    counters.tunnels.fetch_add(1, Ordering::Relaxed);
    splice(tcp, tx, req.into_body()).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The copy loops
// ---------------------------------------------------------------------------------------------

/// Copy both ways until both directions ended; an error in one ends both.
async fn splice(tcp: TcpStream, tx: SendStream<Bytes>, rx: RecvStream) {
    let (rd, wr) = tcp.into_split();
    let _ = tokio::try_join!(socket_to_h2(rd, tx), h2_to_socket(rx, wr));
}

async fn socket_to_h2(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut tx: SendStream<Bytes>,
) -> anyhow::Result<()> {
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(16 * 1024);
        if rd.read_buf(&mut buf).await? == 0 {
            tx.send_data(Bytes::new(), true)?;
            return Ok(());
        }
        let mut chunk = buf.split().freeze();
        while !chunk.is_empty() {
            tx.reserve_capacity(chunk.len());
            let granted = match std::future::poll_fn(|cx| tx.poll_capacity(cx)).await {
                Some(granted) => granted?,
                None => bail!("stream closed"),
            };
            if granted == 0 {
                continue;
            }
            let piece = chunk.split_to(granted.min(chunk.len()));
            tx.send_data(piece, false)?;
        }
    }
}

async fn h2_to_socket(
    mut rx: RecvStream,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
) -> anyhow::Result<()> {
    while let Some(chunk) = rx.data().await {
        let chunk = chunk?;
        wr.write_all(&chunk).await?;
        rx.flow_control().release_capacity(chunk.len())?;
    }
    wr.shutdown().await?;
    Ok(())
}

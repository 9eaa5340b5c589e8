//! `waypoint curl`: one HTTP request sent to a waypoint the way ztunnel sends it — mutual TLS
//! with a workload's SPIFFE certificate, an HTTP/2 CONNECT to the destination (service VIP:port
//! or pod IP:port) with ztunnel's `forwarded` and `baggage` headers, and HTTP/1.1 inside the
//! tunnel. For debugging a waypoint without a mesh around it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::commands::explain::{parse_header, parse_url};
use crate::commands::sim::ZtunnelClient;
use crate::control::identity::{SpiffeId, WorkloadCert};

#[derive(Debug, clap::Args)]
pub struct CurlArgs {
    /// The waypoint's HBONE address.
    #[arg(long, default_value = "127.0.0.1:15008")]
    pub waypoint: SocketAddr,
    /// SPIFFE id the waypoint's certificate must carry (ztunnel checks it the same way).
    #[arg(long, default_value = "spiffe://cluster.local/ns/default/sa/waypoint")]
    pub waypoint_identity: SpiffeId,
    /// The client workload's cert-chain.pem, key.pem and root-cert.pem (`waypoint certs`
    /// writes them as certs/<namespace>/<service-account>/).
    #[arg(long, value_name = "DIR")]
    pub certs: PathBuf,
    /// The CONNECT target: the service VIP:port (or a pod IP:port) the client resolved. Default:
    /// the URL's host and port, resolved when it is a name.
    #[arg(long, value_name = "IP:PORT")]
    pub to: Option<SocketAddr>,
    /// The client pod's address, sent as ztunnel's `forwarded: for=` header.
    #[arg(long, default_value = "10.244.1.5:40280")]
    pub source: SocketAddr,
    /// Request method (default GET, or POST with --data).
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    pub method: Option<String>,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Request body.
    #[arg(short = 'd', long = "data")]
    pub data: Option<String>,
    /// Print the response status line and headers before the body.
    #[arg(short = 'i', long)]
    pub include: bool,
    /// Print the tunnel and the request on stderr.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// `http://host[:port]/path?query`: the Host header, and the CONNECT target unless --to.
    pub url: String,
}

/// Sends the request and prints the response. Returns the exit code: 0 for any HTTP response
/// (as curl), 1 when the tunnel or the request failed.
pub fn run(args: &CurlArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    match rt.block_on(send(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn send(args: &CurlArgs) -> anyhow::Result<()> {
    let url = parse_url(&args.url)?;
    let port = url.port.unwrap_or(80);
    let dst = match (args.to, url.host.parse::<IpAddr>()) {
        (Some(to), _) => to,
        (None, Ok(ip)) => SocketAddr::new(ip, port),
        (None, Err(_)) => tokio::net::lookup_host((url.host.as_str(), port))
            .await
            .with_context(|| format!("resolving {} (or give --to VIP:PORT)", url.host))?
            .next()
            .with_context(|| format!("{} has no address (give --to VIP:PORT)", url.host))?,
    };
    let cert = WorkloadCert::from_files(
        &args.certs.join("cert-chain.pem"),
        &args.certs.join("key.pem"),
        &args.certs.join("root-cert.pem"),
    )?;
    if args.verbose {
        eprintln!(
            "* HBONE to {} as {} (the waypoint must be {})",
            args.waypoint, cert.id, args.waypoint_identity
        );
        eprintln!("* CONNECT {dst}  forwarded: for=\"{}\"", args.source);
    }
    let mut client = ZtunnelClient::new(cert, args.waypoint, args.waypoint_identity.clone());
    client.source = args.source;
    let mut sender = client.http1(dst).await.with_context(|| {
        format!(
            "opening the HBONE tunnel to {dst} through the waypoint at {}",
            args.waypoint
        )
    })?;
    let method = match (&args.method, &args.data) {
        (Some(m), _) => m.to_ascii_uppercase(),
        (None, Some(_)) => "POST".into(),
        (None, None) => "GET".into(),
    };
    let authority = match url.port {
        Some(p) => format!("{}:{p}", url.host),
        None => url.host.clone(),
    };
    let mut request = http::Request::builder()
        .method(method.as_str())
        .uri(url.path.as_str());
    if !args.headers.iter().any(|(k, _)| k == "host") {
        request = request.header("host", authority.as_str());
    }
    if !args.headers.iter().any(|(k, _)| k == "user-agent") {
        request = request.header(
            "user-agent",
            concat!("waypoint-curl/", env!("CARGO_PKG_VERSION")),
        );
    }
    for (k, v) in &args.headers {
        request = request.header(k.as_str(), v.as_str());
    }
    let body = Bytes::from(args.data.clone().unwrap_or_default());
    let request = request
        .body(Full::new(body))
        .context("building the request")?;
    if args.verbose {
        eprintln!("> {method} {} HTTP/1.1", url.path);
        for (k, v) in request.headers() {
            eprintln!("> {k}: {}", String::from_utf8_lossy(v.as_bytes()));
        }
    }
    sender.ready().await.context("the tunnel closed")?;
    let response = sender
        .send_request(request)
        .await
        .context("sending the request through the tunnel")?;
    let (parts, body) = response.into_parts();
    let mut head = format!("HTTP/1.1 {}\n", parts.status);
    for (k, v) in &parts.headers {
        head.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    if args.include {
        crate::commands::output::write(format_args!("{head}\n"));
    } else if args.verbose {
        for line in head.lines() {
            eprintln!("< {line}");
        }
    }
    let body = body.collect().await.context("reading the response body")?;
    crate::commands::output::bytes(&body.to_bytes());
    Ok(())
}

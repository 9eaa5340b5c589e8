//! CUSTOM authorization through external authorizers, both kinds meshConfig offers: an HTTP one
//! (`envoyExtAuthzHttp`) and a gRPC one (`envoyExtAuthzGrpc`, Envoy's
//! `envoy.service.auth.v3.Authorization/Check`), both run in the test. Allowed requests carry the
//! authorizer's headers upstream; denials are the authorizer's answer; a provider that is not
//! configured or cannot be reached denies (`failOpen: false`, the default) unless `failOpen`.
//! With `includeRequestBodyInCheck` the authorizers decide on the request body, which the upstream
//! still receives whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use parking_lot::Mutex;
use waypoint::commands::demo::BenchOptions;
use waypoint::dataplane::proxy::ext_authz::load_providers;
use waypoint_tests::{service_yaml, workload_yaml, Mesh};

/// The in-test HTTP authorizer: allows when `x-ext-authz: allow`; records method and path.
async fn http_authorizer() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    log.lock().push(format!("{} {}", req.method(), req.uri()));
                    let allow = req
                        .headers()
                        .get("x-ext-authz")
                        .is_some_and(|v| v == "allow");
                    let resp = if allow {
                        http::Response::builder()
                            .header("x-ext-authz-check-result", "allowed")
                            .body(http_body_util::Full::new(bytes::Bytes::new()))
                    } else {
                        http::Response::builder()
                            .status(403)
                            .header("x-ext-authz-check-result", "denied")
                            .body(http_body_util::Full::new(bytes::Bytes::from(
                                "denied by the http authorizer",
                            )))
                    };
                    async move { Ok::<_, std::convert::Infallible>(resp.unwrap()) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

struct GrpcAuthorizer(Arc<Mutex<Vec<String>>>);

#[tonic::async_trait]
impl Authorization for GrpcAuthorizer {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let http = request
            .into_inner()
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .unwrap_or_default();
        self.0.lock().push(format!("{} {}", http.method, http.path));
        let allow = http
            .headers
            .get("x-ext-authz")
            .is_some_and(|v| v == "allow");
        use envoy_types::ext_authz::v3::pb;
        let response = if allow {
            CheckResponse {
                status: Some(envoy_types::pb::google::rpc::Status {
                    code: 0,
                    ..Default::default()
                }),
                http_response: Some(pb::HttpResponse::OkResponse(pb::OkHttpResponse {
                    headers: vec![pb::HeaderValueOption {
                        header: Some(pb::HeaderValue {
                            key: "x-grpc-check".into(),
                            value: "allowed".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
                ..Default::default()
            }
        } else {
            CheckResponse {
                // PERMISSION_DENIED
                status: Some(envoy_types::pb::google::rpc::Status {
                    code: 7,
                    ..Default::default()
                }),
                http_response: Some(pb::HttpResponse::DeniedResponse(pb::DeniedHttpResponse {
                    status: Some(pb::HttpStatus { code: 401 }),
                    body: "denied by the grpc authorizer".into(),
                    ..Default::default()
                })),
                ..Default::default()
            }
        };
        Ok(tonic::Response::new(response))
    }
}

async fn grpc_authorizer() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = AuthorizationServer::new(GrpcAuthorizer(seen.clone()));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tcp),
                            hyper_util::service::TowerToHyperService::new(server),
                        )
                        .await;
            });
        }
    });
    (addr, seen)
}

fn custom(name: &str, provider: &str, prefix: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  targetRefs: [{{kind: Service, group: \"\", name: reviews}}]\n  action: CUSTOM\n  provider: {{name: {provider}}}\n  rules:\n  - to: [{{operation: {{paths: [\"{prefix}*\"]}}}}]\n---\n"
    )
}

async fn get(mesh: &Mesh, path: &str, allow: bool) -> (u16, http::HeaderMap, String) {
    let headers: &[(&str, &str)] = if allow {
        &[("x-ext-authz", "allow")]
    } else {
        &[]
    };
    let r = waypoint_tests::reviews_request(&mesh.client(), "GET", path, headers).await;
    (r.status, r.headers, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_policies_ask_http_and_grpc_authorizers() {
    let (http_addr, http_seen) = http_authorizer().await;
    let (grpc_addr, grpc_seen) = grpc_authorizer().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mesh_config =
        std::env::temp_dir().join(format!("ext-authz-mesh-{}.yaml", std::process::id()));
    std::fs::write(
        &mesh_config,
        format!(
            "extensionProviders:\n\
             - name: http-authz\n  envoyExtAuthzHttp:\n    service: 127.0.0.1\n    port: {}\n    pathPrefix: /check\n    timeout: 5s\n    includeRequestHeadersInCheck: [x-ext-authz]\n    headersToUpstreamOnAllow: [x-ext-authz-check-result]\n    headersToDownstreamOnDeny: [x-ext-authz-check-result]\n\
             - name: grpc-authz\n  envoyExtAuthzGrpc:\n    service: 127.0.0.1\n    port: {}\n    timeout: 5s\n\
             - name: down\n  envoyExtAuthzHttp:\n    service: 127.0.0.1\n    port: {closed}\n    timeout: 2s\n\
             - name: down-open\n  envoyExtAuthzHttp:\n    service: 127.0.0.1\n    port: {closed}\n    timeout: 2s\n    failOpen: true\n\
             - name: tracing\n  zipkin: {{service: zipkin.istio-system.svc.cluster.local, port: 9411}}\n",
            http_addr.port(),
            grpc_addr.port()
        ),
    )
    .unwrap();
    let authorizers: HashMap<_, _> = load_providers(&mesh_config).unwrap();
    assert_eq!(
        authorizers.len(),
        4,
        "tracing providers are not authorizers"
    );

    let mut y = service_yaml("reviews", "10.0.0.10", 9080, "http");
    y += &workload_yaml("reviews-v1", "@1", "reviews", "v1", "bookinfo-reviews");
    y += &custom("http", "http-authz", "/http");
    y += &custom("grpc", "grpc-authz", "/grpc");
    y += &custom("missing", "not-configured", "/missing");
    y += &custom("down", "down", "/down");
    y += &custom("open", "down-open", "/open");
    let mesh = Mesh::start_with(&y, |_, opts: &mut BenchOptions| {
        opts.authorizers = authorizers;
    })
    .await;

    // HTTP authorizer: allowed with its header upstream; denied with its own answer.
    let (status, _, body) = get(&mesh, "/http/1", true).await;
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        echo["headers"]["x-ext-authz-check-result"], "allowed",
        "{echo}"
    );
    let (status, headers, body) = get(&mesh, "/http/2", false).await;
    assert_eq!(
        (status, body.as_str()),
        (403, "denied by the http authorizer")
    );
    assert_eq!(headers["x-ext-authz-check-result"], "denied");
    assert_eq!(
        *http_seen.lock(),
        ["GET /check/http/1", "GET /check/http/2"]
    );

    // gRPC authorizer.
    let (status, _, body) = get(&mesh, "/grpc/1", true).await;
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-grpc-check"], "allowed", "{echo}");
    let (status, _, body) = get(&mesh, "/grpc/2", false).await;
    assert_eq!(
        (status, body.as_str()),
        (401, "denied by the grpc authorizer")
    );
    assert_eq!(*grpc_seen.lock(), ["GET /grpc/1", "GET /grpc/2"]);

    // Not configured, or unreachable: closed; unreachable with failOpen: open.
    assert_eq!(get(&mesh, "/missing", true).await.0, 403);
    assert_eq!(get(&mesh, "/down", true).await.0, 403);
    assert_eq!(get(&mesh, "/open", true).await.0, 200);
    // No CUSTOM rule matches: no authorizer is asked.
    assert_eq!(get(&mesh, "/elsewhere", false).await.0, 200);
    assert_eq!(http_seen.lock().len(), 2);

    let log = mesh.wait_for_log_lines(8).await;
    let details: Vec<&str> = log
        .iter()
        .map(|l| l["response_code_details"].as_str().unwrap())
        .collect();
    assert_eq!(
        details,
        [
            "via_upstream",
            "ext_authz_denied",
            "via_upstream",
            "ext_authz_denied",
            "ext_authz_error",
            "ext_authz_error",
            "via_upstream",
            "via_upstream"
        ]
    );
    assert_eq!(log[1]["response_flags"], "UAEX");
}

/// What a body-deciding authorizer was asked: path, `x-envoy-auth-partial-body`, the body (gRPC:
/// `body` as bytes, or `raw_body` marked `raw:`).
type BodySeen = Arc<Mutex<Vec<(String, Option<String>, Vec<u8>)>>>;

/// An HTTP authorizer that allows a check whose body starts with `ok`; records what it got,
/// checking that the body's length is the check's content-length.
async fn http_body_authorizer() -> (SocketAddr, BodySeen) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = BodySeen::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let length = parts
                                .headers
                                .get("content-length")
                                .map_or(0, |v| v.to_str().unwrap().parse::<usize>().unwrap());
                            assert_eq!(length, body.len(), "content-length of the check");
                            let partial = parts
                                .headers
                                .get("x-envoy-auth-partial-body")
                                .map(|v| v.to_str().unwrap().to_string());
                            log.lock()
                                .push((parts.uri.path().to_string(), partial, body.to_vec()));
                            let status = if body.starts_with(b"ok") { 200 } else { 403 };
                            Ok::<_, hyper::Error>(
                                http::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Full::new(bytes::Bytes::from(
                                        "the body says no",
                                    )))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// The gRPC counterpart: allows when `body` (or `raw_body`) starts with `ok`.
struct GrpcBodyAuthorizer(BodySeen);

#[tonic::async_trait]
impl Authorization for GrpcBodyAuthorizer {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        use envoy_types::ext_authz::v3::pb;
        let http = request
            .into_inner()
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .unwrap_or_default();
        let body = if http.raw_body.is_empty() {
            http.body.into_bytes()
        } else {
            assert!(http.body.is_empty(), "raw_body instead of body");
            [b"raw:".as_slice(), &http.raw_body].concat()
        };
        let allow = body.starts_with(b"ok") || body.starts_with(b"raw:ok");
        let partial = http.headers.get("x-envoy-auth-partial-body").cloned();
        self.0.lock().push((http.path, partial, body));
        let (code, http_response) = if allow {
            (0, None)
        } else {
            (
                7,
                Some(pb::HttpResponse::DeniedResponse(pb::DeniedHttpResponse {
                    status: Some(pb::HttpStatus { code: 403 }),
                    body: "the body says no".into(),
                    ..Default::default()
                })),
            )
        };
        Ok(tonic::Response::new(CheckResponse {
            status: Some(envoy_types::pb::google::rpc::Status {
                code,
                ..Default::default()
            }),
            http_response,
            ..Default::default()
        }))
    }
}

async fn grpc_body_authorizer() -> (SocketAddr, BodySeen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = BodySeen::default();
    let server = AuthorizationServer::new(GrpcBodyAuthorizer(seen.clone()));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tcp),
                            hyper_util::service::TowerToHyperService::new(server),
                        )
                        .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_checks_carry_the_request_body() {
    let (http_addr, http_seen) = http_body_authorizer().await;
    let (grpc_addr, grpc_seen) = grpc_body_authorizer().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mesh_config =
        std::env::temp_dir().join(format!("ext-authz-body-mesh-{}.yaml", std::process::id()));
    let (h, g) = (http_addr.port(), grpc_addr.port());
    std::fs::write(
        &mesh_config,
        format!(
            "extensionProviders:\n\
             - name: http-body\n  envoyExtAuthzHttp:\n    service: 127.0.0.1\n    port: {h}\n    timeout: 5s\n    includeRequestBodyInCheck: {{maxRequestBytes: 1024}}\n\
             - name: http-partial\n  envoyExtAuthzHttp:\n    service: 127.0.0.1\n    port: {h}\n    timeout: 5s\n    includeRequestBodyInCheck: {{maxRequestBytes: 16, allowPartialMessage: true}}\n\
             - name: grpc-body\n  envoyExtAuthzGrpc:\n    service: 127.0.0.1\n    port: {g}\n    timeout: 5s\n    includeRequestBodyInCheck: {{maxRequestBytes: 1024}}\n\
             - name: grpc-bytes\n  envoyExtAuthzGrpc:\n    service: 127.0.0.1\n    port: {g}\n    timeout: 5s\n    includeRequestBodyInCheck: {{maxRequestBytes: 1024, packAsBytes: true}}\n\
             - name: down-open\n  envoyExtAuthzHttp:\n    service: 127.0.0.1\n    port: {closed}\n    timeout: 2s\n    failOpen: true\n    includeRequestBodyInCheck: {{maxRequestBytes: 8}}\n"
        ),
    )
    .unwrap();
    let authorizers = load_providers(&mesh_config).unwrap();
    let mut y = service_yaml("reviews", "10.0.0.10", 9080, "http");
    y += &workload_yaml("reviews-v1", "@1", "reviews", "v1", "bookinfo-reviews");
    y += &custom("hb", "http-body", "/hb");
    y += &custom("hp", "http-partial", "/hp");
    y += &custom("gb", "grpc-body", "/gb");
    y += &custom("gx", "grpc-bytes", "/gx");
    y += &custom("open", "down-open", "/open");
    let mesh = Mesh::start_with(&y, |_, opts: &mut BenchOptions| {
        opts.authorizers = authorizers;
    })
    .await;
    let post = |path: &'static str, body: bytes::Bytes| {
        let client = mesh.client();
        async move { waypoint_tests::reviews_request_with_body(&client, "POST", path, &[], body).await }
    };
    let upstream_body = || mesh.app("reviews-v1").last_body.lock().clone().unwrap();
    let ok = |n: usize| -> bytes::Bytes {
        let mut b = b"ok".to_vec();
        b.extend((0..n).map(|i| b'a' + (i % 26) as u8));
        b.into()
    };
    let seen = |s: &BodySeen, path: &str, partial: Option<&str>, body: &[u8]| {
        (path.to_string(), partial.map(String::from), body.to_vec())
            == *s.lock().last().expect("the authorizer was asked")
    };

    // HTTP: the body is the check's; it decides; the upstream gets it unchanged.
    let r = post("/hb/1", ok(0)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(seen(&http_seen, "/hb/1", Some("false"), b"ok"));
    assert_eq!(upstream_body(), ok(0));
    let r = post("/hb/2", "no".into()).await;
    assert_eq!((r.status, r.body.as_str()), (403, "the body says no"));
    assert!(seen(&http_seen, "/hb/2", Some("false"), b"no"));
    // Exactly maxRequestBytes is whole; one byte more is 413, and the authorizer is not asked.
    assert_eq!(post("/hb/3", ok(1022)).await.status, 200);
    assert!(seen(&http_seen, "/hb/3", Some("false"), &ok(1022)));
    let asked = http_seen.lock().len();
    let r = post("/hb/4", ok(1023)).await;
    assert_eq!((r.status, r.body.as_str()), (413, "Payload Too Large"));
    assert_eq!(http_seen.lock().len(), asked);
    // A request without a body is checked without one.
    let r = waypoint_tests::reviews_request(&mesh.client(), "GET", "/hb/5", &[]).await;
    assert_eq!(r.status, 403);
    assert!(seen(&http_seen, "/hb/5", None, b""));

    // allowPartialMessage: the first 16 bytes, marked partial; the upstream still gets all of a
    // body far larger than anything buffered (256 KiB: streamed after the replayed part).
    let big = ok(256 * 1024);
    let r = post("/hp/1", big.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(seen(&http_seen, "/hp/1", Some("true"), &big[..16]));
    assert!(upstream_body() == big, "the upstream got the whole body");
    assert_eq!(post("/hp/2", ok(14)).await.status, 200);
    assert!(seen(&http_seen, "/hp/2", Some("false"), &ok(14)));
    assert_eq!(post("/hp/3", "no, but later ok".into()).await.status, 403);

    // gRPC: `body` as a string, or `raw_body` with packAsBytes.
    let r = post("/gb/1", ok(100)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(seen(&grpc_seen, "/gb/1", Some("false"), &ok(100)));
    assert_eq!(upstream_body(), ok(100));
    let r = post("/gb/2", "no".into()).await;
    assert_eq!((r.status, r.body.as_str()), (403, "the body says no"));
    assert_eq!(post("/gb/3", ok(1023)).await.status, 413);
    let binary = bytes::Bytes::from_static(b"ok\xff\xfe\x00binary");
    let r = post("/gx/1", binary.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(seen(
        &grpc_seen,
        "/gx/1",
        Some("false"),
        &[b"raw:".as_slice(), &binary].concat()
    ));
    assert_eq!(upstream_body(), binary);

    // The buffer limit answers 413 even where failOpen would let a failed check through.
    assert_eq!(post("/open/1", ok(7)).await.status, 413);
    assert_eq!(post("/open/2", ok(6)).await.status, 200);

    let log = mesh.wait_for_log_lines(14).await;
    let details: Vec<&str> = log
        .iter()
        .map(|l| l["response_code_details"].as_str().unwrap())
        .collect();
    assert_eq!(details[3], "request_payload_too_large", "{details:?}");
    assert_eq!(details[10], "request_payload_too_large", "{details:?}");
    assert_eq!(details[12], "request_payload_too_large", "{details:?}");
    assert_eq!(log[1]["response_flags"], "UAEX");
}

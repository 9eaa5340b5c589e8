//! RequestAuthentication on live traffic: ES256 tokens minted at test time, keys served by an
//! in-test JWKS server over HTTP (fetched once, cached) and given inline; Envoy's 401s for an
//! expired token, a foreign signature, an unknown issuer and a wrong audience; a request
//! without a token left to authorization; claims as `request.auth.*`, copied to headers, the
//! token removed before the app.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use waypoint_tests::{service_yaml, workload_yaml, Mesh};

/// A signing key and its public JWK.
struct Signer {
    key: EncodingKey,
    jwk: serde_json::Value,
}

impl Signer {
    fn new(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
        let raw = pair.public_key_raw(); // 0x04 || X || Y
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Signer {
            key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: serde_json::json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
            }),
        }
    }

    fn token(&self, kid: &str, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Serves `jwks` at `/jwks` on 127.0.0.1:0 and counts the fetches; as an OpenID provider whose
/// issuer is `http://ADDR`, it serves `/.well-known/openid-configuration` pointing there.
async fn jwks_server(jwks: serde_json::Value) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicU64::new(0));
    let counter = fetches.clone();
    let jwks = jwks.to_string();
    let openid = serde_json::json!({"issuer": format!("http://{addr}"), "jwks_uri": format!("http://{addr}/jwks")}).to_string();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (jwks, openid, counter) = (jwks.clone(), openid.clone(), counter.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let (status, body) = match req.uri().path() {
                        "/jwks" => {
                            counter.fetch_add(1, Ordering::Relaxed);
                            (200, jwks.clone())
                        }
                        "/.well-known/openid-configuration" => (200, openid.clone()),
                        _ => (404, String::new()),
                    };
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
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
    (addr, fetches)
}

async fn get(mesh: &Mesh, headers: &[(&str, &str)]) -> (u16, String, http::HeaderMap) {
    let r = waypoint_tests::reviews_request(&mesh.client(), "GET", "/reviews/1", headers).await;
    (r.status, r.body, r.headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_authentication_verifies_tokens_and_feeds_authorization() {
    let signer = Signer::new("k1");
    let stranger = Signer::new("k1"); // same kid, another key: a forged token
    let inline_signer = Signer::new("inline");
    let (jwks_addr, fetches) = jwks_server(serde_json::json!({"keys": [signer.jwk]})).await;
    let inline = serde_json::json!({"keys": [inline_signer.jwk]}).to_string();
    let mut y = service_yaml("reviews", "10.0.0.10", 9080, "http");
    y += &workload_yaml("reviews-v1", "@1", "reviews", "v1", "bookinfo-reviews");
    y += &format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: default}}\nspec:\n  targetRefs: [{{kind: Service, group: \"\", name: reviews}}]\n  jwtRules:\n  - issuer: https://issuer.test\n    jwksUri: http://{jwks_addr}/jwks\n    audiences: [bookinfo]\n    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]\n  - issuer: https://inline.test\n    jwks: '{inline}'\n---\n"
    );
    y += "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: alice-only, namespace: default}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: reviews}]\n  rules:\n  - from: [{source: {requestPrincipals: [\"https://issuer.test/alice\", \"https://inline.test/*\"]}}]\n    when: [{key: \"request.auth.claims[groups]\", values: [readers]}]\n---\n";
    let mesh = Mesh::start(&y).await;
    let exp = now() + 600;
    let claims = |iss: &str, sub: &str, aud: &str, exp: u64| serde_json::json!({"iss": iss, "sub": sub, "aud": aud, "exp": exp, "groups": ["readers"]});
    let bearer = |t: String| format!("Bearer {t}");

    // A verified token: allowed, its subject copied to a header, the token not forwarded.
    let alice = bearer(signer.token(
        "k1",
        claims("https://issuer.test", "alice", "bookinfo", exp),
    ));
    let (status, body, _) = get(&mesh, &[("authorization", &alice)]).await;
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-jwt-sub"], "alice", "{echo}");
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    // Another subject is verified but not allowed by the policy.
    let bob = bearer(signer.token("k1", claims("https://issuer.test", "bob", "bookinfo", exp)));
    let (status, body, _) = get(&mesh, &[("authorization", &bob)]).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    // No token: authentication passes, authorization (which wants a principal) denies.
    let (status, _, _) = get(&mesh, &[]).await;
    assert_eq!(status, 403);
    // The inline provider.
    let inline_token =
        bearer(inline_signer.token("inline", claims("https://inline.test", "carol", "x", exp)));
    let (status, body, _) = get(&mesh, &[("authorization", &inline_token)]).await;
    assert_eq!(status, 200, "{body}");

    // Tokens that fail verification: 401 with Envoy's message and realm.
    let rejected = [
        (
            signer.token(
                "k1",
                claims("https://issuer.test", "alice", "bookinfo", now() - 3600),
            ),
            "Jwt is expired",
        ),
        (
            stranger.token(
                "k1",
                claims("https://issuer.test", "alice", "bookinfo", exp),
            ),
            "Jwt verification fails",
        ),
        (
            signer.token("k1", claims("https://other.test", "alice", "bookinfo", exp)),
            "Jwt issuer is not configured",
        ),
        (
            signer.token("k1", claims("https://issuer.test", "alice", "other", exp)),
            "Audiences in Jwt are not allowed",
        ),
        (
            "not.a-token".to_string(),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        ("x.%%%.y".to_string(), "Jwt payload is an invalid Base64"),
    ];
    for (token, message) in &rejected {
        let (status, body, headers) =
            get(&mesh, &[("authorization", &bearer(token.clone()))]).await;
        assert_eq!((status, body.as_str()), (401, *message));
        assert_eq!(
            headers["www-authenticate"],
            "Bearer realm=\"http://reviews:9080/reviews/1\", error=\"invalid_token\""
        );
    }
    let log = mesh.wait_for_log_lines(4 + rejected.len()).await;
    assert!(
        log.iter()
            .any(|l| l["response_code_details"] == "jwt_authn_access_denied{Jwt_is_expired}"),
        "{log:?}"
    );
    // The remote keys were fetched once for all these requests.
    assert_eq!(fetches.load(Ordering::Relaxed), 1);
    assert_eq!(
        mesh.app("reviews-v1")
            .stats
            .requests
            .load(Ordering::Relaxed),
        2
    );

    // explain verifies the token the same way and decides the same.
    let snapshot = mesh.bench.app.snapshot.load_full();
    let expired = bearer(signer.token(
        "k1",
        claims("https://issuer.test", "alice", "bookinfo", now() - 3600),
    ));
    for (authorization, status, details) in [
        (alice.as_str(), None, None),
        (
            bob.as_str(),
            Some(403),
            Some("rbac_access_denied_matched_policy[none]"),
        ),
        (
            expired.as_str(),
            Some(401),
            Some("jwt_authn_access_denied{Jwt_is_expired}"),
        ),
    ] {
        let args = waypoint::commands::explain::ExplainArgs {
            config: Some(std::path::PathBuf::from("(in-process)")),
            xds_dump: None,
            trust_domain: waypoint_tests::TRUST_DOMAIN.into(),
            waypoint: Default::default(),
            source: Some(waypoint_tests::spiffe("productpage")),
            source_ip: None,
            headers: vec![("authorization".into(), authorization.into())],
            output: waypoint::commands::explain::Output::Json,
            method: "GET".into(),
            url: "http://reviews:9080/reviews/1".into(),
        };
        let a = waypoint::commands::explain::explain(&snapshot, &args)
            .unwrap()
            .authorization
            .unwrap();
        assert_eq!(a.status, status, "{:?}", a.authentication);
        assert_eq!(a.response_code_details.as_deref(), details);
    }
    let text = waypoint::commands::explain::explain(
        &snapshot,
        &waypoint::commands::explain::ExplainArgs {
            config: Some(std::path::PathBuf::from("(in-process)")),
            xds_dump: None,
            trust_domain: waypoint_tests::TRUST_DOMAIN.into(),
            waypoint: Default::default(),
            source: None,
            source_ip: None,
            headers: vec![("authorization".into(), alice.clone())],
            output: waypoint::commands::explain::Output::Text,
            method: "GET".into(),
            url: "http://reviews:9080/reviews/1".into(),
        },
    )
    .unwrap()
    .render_text();
    assert!(
        text.contains("token: verified https://issuer.test/alice"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_found_by_openid_discovery_when_no_jwks_is_given() {
    // A jwtRule with neither jwks nor jwksUri: the keys are the `jwks_uri` of the issuer's
    // `/.well-known/openid-configuration`, as istiod's JWKS resolver finds them.
    let signer = Signer::new("k1");
    let stranger = Signer::new("k1");
    let (addr, fetches) = jwks_server(serde_json::json!({"keys": [signer.jwk]})).await;
    let issuer = format!("http://{addr}");
    let mut y = service_yaml("reviews", "10.0.0.10", 9080, "http");
    y += &workload_yaml("reviews-v1", "@1", "reviews", "v1", "bookinfo-reviews");
    y += &format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: default}}\nspec:\n  targetRefs: [{{kind: Service, group: \"\", name: reviews}}]\n  jwtRules:\n  - issuer: {issuer}/\n---\n"
    );
    let mesh = Mesh::start(&y).await;
    // The trailing `/` of the configured issuer is dropped for discovery, as istiod does;
    // the token's `iss` must still equal the configured issuer.
    let claims =
        serde_json::json!({"iss": format!("{issuer}/"), "sub": "alice", "exp": now() + 600});
    let good = format!("Bearer {}", signer.token("k1", claims.clone()));
    let forged = format!("Bearer {}", stranger.token("k1", claims));
    let (status, body, _) = get(&mesh, &[("authorization", &good)]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = get(&mesh, &[("authorization", &forged)]).await;
    assert_eq!((status, body.as_str()), (401, "Jwt verification fails"));
    let (status, body, _) = get(&mesh, &[("authorization", &good)]).await;
    assert_eq!(status, 200, "{body}");
    // Discovered and fetched once, then cached.
    assert_eq!(fetches.load(Ordering::Relaxed), 1);
}

//! With feature `json`: compile the Envoy protos that the xDS front-end reads
//! (listener, cluster, endpoint, route, HCM, tcp_proxy, fault, …) into one
//! `FileDescriptorSet` in `OUT_DIR`, which `src/xds/json.rs` embeds. The
//! `.proto` files come from the `proto/` folder the envoy-types crate ships
//! (found through `cargo metadata`), so nothing is vendored here. Without the
//! feature this script does nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "json")]
    json::compile();
}

#[cfg(feature = "json")]
mod json {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The root files; their imports are pulled in by protox.
    const ROOTS: &[&str] = &[
        "envoy/config/listener/v3/listener.proto",
        "envoy/config/cluster/v3/cluster.proto",
        "envoy/config/endpoint/v3/endpoint.proto",
        "envoy/config/route/v3/route.proto",
        "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
        "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
        "envoy/extensions/filters/http/fault/v3/fault.proto",
        "envoy/extensions/filters/http/router/v3/router.proto",
        "envoy/extensions/filters/http/cors/v3/cors.proto",
        "envoy/extensions/transport_sockets/internal_upstream/v3/internal_upstream.proto",
        "envoy/extensions/transport_sockets/tls/v3/tls.proto",
        "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
        "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
        "envoy/extensions/matching/common_inputs/network/v3/network_inputs.proto",
        "envoy/admin/v3/config_dump.proto",
        "google/protobuf/wrappers.proto",
        "xds/type/matcher/v3/ip.proto",
    ];

    const INCLUDES: &[&str] = &[
        "proto/data-plane-api",
        "proto/xds",
        "proto/protoc-gen-validate",
        "proto/googleapis",
        "proto/cel-spec/proto",
        "proto/opentelemetry-proto",
        "proto/client_model",
    ];

    /// `xds.type.matcher.v3.IPMatcher` (istiod's filter_chain_matcher on
    /// destination IP) is not among the protos envoy-types ships; this is
    /// its wire shape (field names and numbers of cncf/xds
    /// `xds/type/matcher/v3/ip.proto`), written out here.
    const IP_MATCHER_PROTO: &str = r#"syntax = "proto3";
package xds.type.matcher.v3;
import "xds/core/v3/cidr.proto";
import "xds/type/matcher/v3/matcher.proto";
message IPMatcher {
  message IPRangeMatcher {
    repeated xds.core.v3.CidrRange ranges = 1;
    Matcher.OnMatch on_match = 2;
    bool exclusive = 3;
  }
  repeated IPRangeMatcher range_matchers = 1;
}
"#;

    pub fn compile() {
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
        let root = envoy_types_dir();
        let extra = out.join("extra-protos");
        let ip = extra.join("xds/type/matcher/v3");
        std::fs::create_dir_all(&ip).expect("create extra proto dir");
        std::fs::write(ip.join("ip.proto"), IP_MATCHER_PROTO).expect("write ip.proto");
        let mut includes: Vec<PathBuf> = vec![extra];
        includes.extend(INCLUDES.iter().map(|i| root.join(i)));
        let fds = protox::compile(ROOTS, &includes).unwrap_or_else(|e| {
            panic!(
                "compiling Envoy protos from {}: {e:?}",
                root.join("proto").display()
            )
        });
        let bytes = prost::Message::encode_to_vec(&fds);
        std::fs::write(out.join("envoy_descriptors.bin"), bytes).expect("write descriptors");
    }

    /// The envoy-types package directory, from `cargo metadata` (its
    /// `manifest_path`), so the registry location is never guessed.
    fn envoy_types_dir() -> PathBuf {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
        let mut cmd = Command::new(cargo);
        // Offline: the build that runs this script has already fetched every package.
        cmd.args(["metadata", "--format-version", "1", "--offline"])
            .arg("--manifest-path")
            .arg(manifest.join("Cargo.toml"));
        // Only this platform's packages: the others need not be downloaded.
        if let Some(target) = std::env::var_os("TARGET") {
            cmd.arg("--filter-platform").arg(target);
        }
        let output = cmd.output().expect("run cargo metadata");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let meta: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
        let packages = meta["packages"].as_array().expect("packages");
        let pkg = packages
            .iter()
            .find(|p| p["name"] == "envoy-types")
            .expect("envoy-types in cargo metadata");
        let path = Path::new(pkg["manifest_path"].as_str().expect("manifest_path"));
        let dir = path.parent().expect("envoy-types dir").to_path_buf();
        println!("cargo:rerun-if-changed={}", dir.join("proto").display());
        dir
    }
}

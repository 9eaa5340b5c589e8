//! With feature `json`: compile the Envoy protos that the xDS front-end reads
//! (listener, cluster, endpoint, route, HCM, tcp_proxy, fault, …) into one
//! `FileDescriptorSet` in `OUT_DIR`, which `src/xds/json.rs` embeds. The
//! `.proto` files come from the `proto/` folder the envoy-types crate ships
//! (found by asking `cargo metadata` about a probe package that depends on
//! envoy-types alone), so nothing is vendored here. Without the
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
        "envoy/extensions/filters/http/rbac/v3/rbac.proto",
        "envoy/extensions/filters/network/rbac/v3/rbac.proto",
        "envoy/extensions/filters/http/jwt_authn/v3/config.proto",
        "envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto",
        "envoy/extensions/filters/network/ext_authz/v3/ext_authz.proto",
        "envoy/extensions/filters/http/set_filter_state/v3/set_filter_state.proto",
        "envoy/extensions/filters/network/set_filter_state/v3/set_filter_state.proto",
        "envoy/extensions/path/match/uri_template/v3/uri_template_match.proto",
        "envoy/extensions/transport_sockets/internal_upstream/v3/internal_upstream.proto",
        "envoy/extensions/transport_sockets/tls/v3/tls.proto",
        "envoy/extensions/transport_sockets/tls/v3/secret.proto",
        "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
        "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
        "envoy/extensions/matching/common_inputs/network/v3/network_inputs.proto",
        "envoy/extensions/access_loggers/file/v3/file.proto",
        "envoy/extensions/access_loggers/filters/cel/v3/cel.proto",
        "envoy/config/trace/v3/opentelemetry.proto",
        "envoy/config/trace/v3/zipkin.proto",
        "envoy/admin/v3/config_dump.proto",
        "envoy/admin/v3/clusters.proto",
        "envoy/admin/v3/server_info.proto",
        "envoy/admin/v3/certs.proto",
        "envoy/admin/v3/memory.proto",
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

    /// The envoy-types package directory, as cargo itself reports it.
    ///
    /// `cargo metadata` on this workspace would need every package of the
    /// workspace graph, dev-dependencies of every member included, and a
    /// build of one package (`cargo run -p waypoint`) downloads only its own.
    /// So cargo is asked about a probe package in OUT_DIR whose only
    /// dependency is envoy-types, resolved offline against a copy of this
    /// workspace's Cargo.lock, which pins the version this build uses (and
    /// every package that resolution needs was downloaded for this build).
    /// Source replacement (`cargo vendor`) applies, since cargo reads the
    /// configuration from this package's directory. `ENVOY_TYPES_DIR` overrides the lookup.
    fn envoy_types_dir() -> PathBuf {
        println!("cargo:rerun-if-env-changed=ENVOY_TYPES_DIR");
        if let Some(dir) = std::env::var_os("ENVOY_TYPES_DIR") {
            let dir = PathBuf::from(dir);
            println!("cargo:rerun-if-changed={}", dir.join("proto").display());
            return dir;
        }
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
        let manifest_dir =
            PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
        let probe = out.join("envoy-types-probe");
        std::fs::create_dir_all(probe.join("src")).expect("create probe dir");
        std::fs::write(probe.join("src/lib.rs"), "").expect("write probe lib.rs");
        std::fs::write(
            probe.join("Cargo.toml"),
            "[package]\nname = \"envoy-types-probe\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             [dependencies]\nenvoy-types = \"*\"\n\
             # its own workspace root, not a member of the project's\n[workspace]\n",
        )
        .expect("write probe Cargo.toml");
        if let Some(lock) = workspace_lock(&manifest_dir) {
            std::fs::copy(&lock, probe.join("Cargo.lock")).expect("copy Cargo.lock to the probe");
            println!("cargo:rerun-if-changed={}", lock.display());
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&manifest_dir)
            .args(["metadata", "--format-version", "1", "--offline"])
            .arg("--manifest-path")
            .arg(probe.join("Cargo.toml"));
        if let Some(target) = std::env::var_os("TARGET") {
            cmd.arg("--filter-platform").arg(target);
        }
        let output = cmd.output().expect("run cargo metadata");
        assert!(
            output.status.success(),
            "cargo metadata on the envoy-types probe ({}) failed; set ENVOY_TYPES_DIR to the \
             envoy-types package directory to skip the lookup: {}",
            probe.display(),
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

    /// The workspace's Cargo.lock: the nearest one above this package.
    fn workspace_lock(manifest_dir: &Path) -> Option<PathBuf> {
        manifest_dir
            .ancestors()
            .map(|d| d.join("Cargo.lock"))
            .find(|p| p.is_file())
    }
}

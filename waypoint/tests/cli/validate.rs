//! `waypoint validate` on bad input: misspelled fields and kinds, kinds the waypoint refuses,
//! type errors with their field path, a single file, and structured warnings in JSON.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n";

fn validate(args: &[&str], path: &Path) -> (Option<i32>, String) {
    let out: Output = Command::new(binary())
        .arg("validate")
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

const SERVICES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/bookinfo/services.yaml"
);

/// A new directory holding bookinfo's services (the VirtualServices' hosts).
fn config_dir(tag: &str) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    std::fs::copy(SERVICES, dir.join("services.yaml")).unwrap();
    dir
}

/// `dir/name` holding `yaml`.
fn file(dir: &Path, name: &str, yaml: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn misspelled_field_in_a_directory_suggests_the_real_one() {
    let dir = config_dir("validate-weigth");
    file(&dir, "vs.yaml", &format!("{VS}      weigth: 10\n"));
    let (code, stdout) = validate(&[], &dir);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("error: vs.yaml doc 0 VirtualService default/reviews: spec.http[0].route[0].weigth: unknown field `weigth` (did you mean `weight`?)"),
        "{stdout}"
    );
}

#[test]
fn misspelled_kind_in_a_file_suggests_the_real_one() {
    let dir = temp_dir("validate-kind");
    let path = file(
        &dir,
        "vs.yaml",
        &VS.replace("VirtualService", "VirtualSevice"),
    );
    let (code, stdout) = validate(&[], &path);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("unknown kind VirtualSevice (did you mean VirtualService?)"),
        "{stdout}"
    );
}

#[test]
fn policies_the_waypoint_cannot_enforce_are_refused() {
    let dir = temp_dir("validate-authz");
    // A JWT rule without keys whose issuer is no URL: its keys cannot be discovered (OpenID
    // discovery needs an http(s) issuer), so it is refused rather than accept tokens it cannot
    // verify.
    let path = file(
        &dir,
        "authn.yaml",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n  namespace: bookinfo\nspec:\n  jwtRules:\n  - issuer: testing@secure.istio.io\n",
    );
    let (code, stdout) = validate(&[], &path);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("error: authn.yaml doc 0 RequestAuthentication bookinfo/jwt: spec.jwtRules[0].jwksUri: issuer \"testing@secure.istio.io\" is not an http(s) URL"),
        "{stdout}"
    );
    // An AuthorizationPolicy is enforced; a field it does not know is refused, never ignored.
    let path = file(
        &dir,
        "authz.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: bookinfo\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: reviews}]\n  rules:\n  - to: [{operation: {pahts: [/admin]}}]\n",
    );
    let (code, stdout) = validate(&[], &path);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("AuthorizationPolicy bookinfo/p: spec.rules[0].to[0].operation.pahts"),
        "{stdout}"
    );
}

#[test]
fn type_error_names_the_field_path() {
    let dir = temp_dir("validate-type");
    let path = file(&dir, "vs.yaml", &format!("{VS}      weight: \"ten\"\n"));
    let (code, stdout) = validate(&[], &path);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("VirtualService default/reviews: spec.http[0].route[0].weight: invalid"),
        "{stdout}"
    );
}

#[test]
fn a_valid_single_file_passes() {
    let (code, stdout) = validate(&[], Path::new(SERVICES));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("services.yaml: valid ("), "{stdout}");
}

#[test]
fn json_warnings_are_objects_like_errors() {
    let dir = config_dir("validate-json");
    file(
        &dir,
        "vs.yaml",
        &VS.replace(
            "  hosts: [reviews]\n",
            "  hosts: [reviews]\n  exportTo: ['.']\n",
        ),
    );
    let (code, stdout) = validate(&["--output", "json"], &dir);
    assert_eq!(code, Some(0), "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let w = &v["warnings"][0];
    assert_eq!(w["file"], "vs.yaml", "{v}");
    assert_eq!(w["field"], "spec.exportTo", "{v}");
    assert_eq!(w["kind"], "VirtualService", "{v}");
    assert_eq!(w["message"], "is not supported yet; ignored", "{v}");

    // An invalid config still lists its warnings.
    file(&dir, "ef.yaml", "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata:\n  name: a\nspec: {}\n");
    let (code, stdout) = validate(&["--output", "json"], &dir);
    assert_eq!(code, Some(1), "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["warnings"][0]["field"], "spec.exportTo", "{v}");
    assert_eq!(v["errors"][0]["kind"], "EnvoyFilter", "{v}");
}

/// A Telemetry naming meshConfig providers: without `--mesh-config` the provider is unknown
/// (a warning naming it), with it the config is clean, and a broken meshConfig fails naming the
/// provider.
#[test]
fn telemetry_providers_come_from_the_mesh_config() {
    let dir = config_dir("validate-telemetry");
    file(
        &dir,
        "telemetry.yaml",
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: istio-system}\nspec:\n  tracing: [{providers: [{name: otel}], randomSamplingPercentage: 5}]\n",
    );
    let (code, out) = validate(&[], &dir);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("istio-system/t") && out.contains("provider otel is not in meshConfig"),
        "{out}"
    );
    let mesh = temp_dir("validate-telemetry-mesh").join("mesh.yaml");
    std::fs::write(
        &mesh,
        "extensionProviders:\n- name: otel\n  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}\n",
    )
    .unwrap();
    let mesh_arg = mesh.to_str().unwrap();
    let (code, out) = validate(&["--mesh-config", mesh_arg], &dir);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("provider otel"), "{out}");
    std::fs::write(
        &mesh,
        "extensionProviders:\n- name: otel\n  opentelemetry: {port: 4317}\n",
    )
    .unwrap();
    let (code, out) = validate(&["--mesh-config", mesh_arg], &dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("extensionProviders otel"), "{out}");
}

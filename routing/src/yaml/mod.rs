//! Istio YAML front-end: ServiceEntry, WorkloadEntry, VirtualService and
//! DestinationRule documents → [`Snapshot`].
//!
//! Loading is two-phase: every document is parsed and checked on its own
//! (field errors), then cross-references are resolved ([`assemble`]).
//! Errors fail the load: invalid values, unknown fields and kinds, and kinds
//! the waypoint should enforce but cannot ([`kinds`]). Valid Istio fields the
//! waypoint does not interpret ([`schema`]) and kinds it does not apply
//! become [`Snapshot::warnings`] ([`Report::warnings`] keeps their parts).

mod actions;
mod assemble;
mod authorization_policy;
mod client_tls;
mod destination_rule;
mod diag;
mod docs;
mod fields;
pub use fields::{parse_duration, DurationError};
mod files;
mod http_route;
mod kinds;
pub mod mesh_config;
mod one_pass;
mod parallel;
mod schema;
mod service_entry;
mod telemetry;
mod virtual_service;
mod workload_entry;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_actions;
#[cfg(test)]
mod tests_authz;
#[cfg(test)]
mod tests_errors;
#[cfg(test)]
mod tests_http_route;
#[cfg(test)]
mod tests_matching;
#[cfg(test)]
mod tests_schema;
#[cfg(test)]
mod tests_telemetry;
#[cfg(test)]
mod tests_tls;

use crate::error::{DocRef, LoadErrors, LoadWarning};
use crate::snapshot::Snapshot;
pub use authorization_policy::WaypointRef;
use diag::Diag;
pub(crate) use fields::parse_duration as parse_go_duration;
pub use files::{
    config_entries, is_config_name, read_config_dir, ConfigEntry, ConfigFiles, InputLimits,
    ReadError, Unreadable, DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_TOTAL_BYTES,
};
use kinds::Class;
use one_pass::one_pass;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use std::any::Any;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

/// API versions accepted for the `networking.istio.io` kinds.
const ISTIO_GROUP: &str = "networking.istio.io";
const ISTIO_VERSIONS: [&str; 3] = ["v1alpha3", "v1beta1", "v1"];
/// API versions accepted for `security.istio.io` AuthorizationPolicy.
const SECURITY_GROUP: &str = "security.istio.io";
const SECURITY_VERSIONS: [&str; 2] = ["v1", "v1beta1"];
/// API versions accepted for `telemetry.istio.io` Telemetry.
const TELEMETRY_GROUP: &str = "telemetry.istio.io";
const TELEMETRY_VERSIONS: [&str; 2] = ["v1", "v1alpha1"];
/// API versions accepted for Gateway API `HTTPRoute`.
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
const GATEWAY_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// Everything parsed from all documents, before cross-referencing.
#[derive(Debug, Default)]
struct Parsed {
    service_entries: Vec<service_entry::ServiceEntryIr>,
    workload_entries: Vec<workload_entry::WorkloadEntryIr>,
    virtual_services: Vec<virtual_service::VirtualServiceIr>,
    destination_rules: Vec<destination_rule::DestinationRuleIr>,
    http_routes: Vec<http_route::HttpRouteIr>,
    authorization_policies: Vec<authorization_policy::AuthorizationPolicyIr>,
    telemetries: Vec<telemetry::TelemetryIr>,
}

/// One document about to be parsed as a known kind.
struct DocCtx<'a> {
    at: DocRef,
    namespace: String,
    name: String,
    text: &'a str,
    /// Lines of the file before `text` (added to the line numbers of parse errors).
    line_offset: usize,
    trust_domain: &'a str,
    dns: &'a crate::dns::DnsAnswers,
    annotations: BTreeMap<String, String>,
    /// The `spec` already parsed with the header ([`one_pass`]): a boxed `Option<S>`, taken
    /// by [`parse_optional_spec`]; `None` when the spec is to be parsed from `text`.
    spec: Cell<Option<Box<dyn Any>>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<Metadata>,
    /// Read by [`parse_spec`].
    #[allow(dead_code)]
    spec: Option<IgnoredAny>,
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
    /// Any other top-level key: an unknown field.
    #[serde(flatten)]
    extra: BTreeMap<String, IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct SpecDoc<S> {
    spec: Option<S>,
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { with_snippet: false }
}

/// A parse error of a document whose first line is file line `line_offset + 1`, with file line
/// numbers.
fn render(e: &serde_saphyr::Error, line_offset: usize) -> String {
    e.render_with_options(serde_saphyr::render_options! { line_offset: line_offset as u64 })
}

/// The outcome of loading a configuration, with its warnings whether or not
/// it loaded (what `waypoint validate` reports).
#[derive(Debug)]
pub struct Report {
    pub result: Result<Snapshot, LoadErrors>,
    pub warnings: Vec<LoadWarning>,
}

/// What loading needs besides the files: the trust domain endpoint identities are minted in,
/// and which waypoint this is (AuthorizationPolicy `targetRefs` attach to it).
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub trust_domain: String,
    pub waypoint: WaypointRef,
    /// Addresses resolved so far for ServiceEntries with `resolution: DNS`
    /// ([`Snapshot::dns_targets`]).
    pub dns: crate::dns::DnsAnswers,
    /// How many bytes of config one load reads at most.
    pub limits: InputLimits,
    /// meshConfig's telemetry providers and defaults, which Telemetry documents name.
    pub mesh: std::sync::Arc<mesh_config::MeshTelemetry>,
}

impl LoadOptions {
    /// `trust_domain`, and the waypoint `default/waypoint` with root namespace `istio-system`.
    pub fn new(trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            waypoint: WaypointRef::default(),
            dns: Default::default(),
            limits: InputLimits::default(),
            mesh: std::sync::Arc::new(mesh_config::MeshTelemetry::builtin()),
        }
    }
}

/// Load every `*.yaml` / `*.yml` file of `dir` (sorted by name, not recursive; dot entries
/// and entries that are not files are left out, the latter with a warning).
pub fn load_dir(dir: &Path, trust_domain: &str) -> Result<Snapshot, LoadErrors> {
    load_dir_with(dir, &LoadOptions::new(trust_domain))
}

/// [`load_dir`] with every option.
pub fn load_dir_with(dir: &Path, options: &LoadOptions) -> Result<Snapshot, LoadErrors> {
    let files = read_config_dir(dir, &options.limits)?;
    check_files_with(&files, options).result
}

/// Load `(file name, content)` pairs, in the given order.
pub fn load_str(files: &[(String, String)], trust_domain: &str) -> Result<Snapshot, LoadErrors> {
    check_str(files, trust_domain).result
}

/// [`load_dir`] when `path` is a directory, else load the one file `path`
/// (whatever its extension); with the structured warnings.
pub fn check_path(path: &Path, trust_domain: &str) -> Report {
    check_path_with(path, &LoadOptions::new(trust_domain))
}

/// [`check_path`] with every option.
pub fn check_path_with(path: &Path, options: &LoadOptions) -> Report {
    let files = if path.is_dir() {
        read_config_dir(path, &options.limits).map_err(LoadErrors::from)
    } else {
        files::read_file(path, &options.limits)
    };
    match files {
        Ok(files) => check_files_with(&files, options),
        Err(e) => Report {
            result: Err(e),
            warnings: Vec::new(),
        },
    }
}

/// [`load_str`] with the structured warnings.
pub fn check_str(files: &[(String, String)], trust_domain: &str) -> Report {
    check_str_with(files, &LoadOptions::new(trust_domain))
}

/// [`check_str`] with every option.
pub fn check_str_with(files: &[(String, String)], options: &LoadOptions) -> Report {
    check(files, Vec::new(), options)
}

/// Load files read by [`read_config_dir`]; entries it could not read are warnings.
pub fn check_files_with(files: &ConfigFiles, options: &LoadOptions) -> Report {
    check(
        &files.files,
        files::unreadable_warnings(&files.unreadable),
        options,
    )
}

fn check(files: &[(String, String)], warnings: Vec<LoadWarning>, options: &LoadOptions) -> Report {
    let mut diag = Diag {
        warnings,
        ..Diag::default()
    };
    let docs: Vec<(&str, docs::RawDoc<'_>)> = files
        .iter()
        .flat_map(|(file, text)| {
            docs::split_documents(text)
                .into_iter()
                .map(move |doc| (file.as_str(), doc))
        })
        .collect();
    let parsed = parallel::parse_documents(&docs, options, &mut diag);
    drop(docs);
    let mut builder = assemble::assemble(parsed, options, &mut diag);
    let mut warnings = diag.warnings;
    if !diag.errors.is_empty() {
        return Report {
            result: Err(LoadErrors(diag.errors)),
            warnings,
        };
    }
    for w in &warnings {
        builder.warning(w.to_string());
    }
    let snapshot = builder.build();
    // Warnings of the snapshot builder itself (no document to name).
    for w in &snapshot.warnings()[warnings.len()..] {
        warnings.push(LoadWarning {
            at: DocRef::default(),
            field: None,
            message: w.clone(),
            subject: false,
        });
    }
    Report {
        result: Ok(snapshot),
        warnings,
    }
}

fn parse_document(
    mut at: DocRef,
    doc: &docs::RawDoc<'_>,
    options: &LoadOptions,
    parsed: &mut Parsed,
    diag: &mut Diag,
) {
    let (text, line_offset) = (doc.text, doc.line_offset);
    let (header, spec) = match one_pass(text) {
        Some(doc) => doc.map_or((None, None), |d| (Some(d.header), d.spec)),
        None => match serde_saphyr::from_str_with_options(text, yaml_options()) {
            Ok(h) => (h, None),
            Err(e) => {
                let e = render(&e, line_offset);
                diag.error(&at, None, format!("invalid YAML: {e}"));
                return;
            }
        },
    };
    let Some(header) = header else { return }; // empty document
    let Some(kind) = header.kind else {
        diag.error(&at, Some("kind"), "missing required field");
        return;
    };
    at.kind = Some(kind.clone());
    let meta = header.metadata.unwrap_or(Metadata {
        name: None,
        namespace: None,
        annotations: None,
    });
    let namespace = meta.namespace.unwrap_or_else(|| "default".to_string());
    match kinds::classify(header.api_version.as_deref(), &kind) {
        Class::Enforced => {}
        Class::Skip(message) => {
            diag.warn(&at, None, message);
            return;
        }
        Class::Refuse {
            message,
            kind_field,
        } => {
            at.name = meta.name.map(|n| format!("{namespace}/{n}"));
            diag.error(&at, kind_field.then_some("kind"), message);
            return;
        }
    }
    let Some(name) = meta.name else {
        diag.error(&at, Some("metadata.name"), "missing required field");
        return;
    };
    at.name = Some(format!("{namespace}/{name}"));
    for key in header.extra.keys() {
        // Every key of `schema::DOCUMENT` is a field of `Header`.
        diag.error(&at, Some(key), schema::unknown_field(key, schema::DOCUMENT));
    }
    let security = matches!(
        kind.as_str(),
        "AuthorizationPolicy" | "RequestAuthentication"
    );
    match header.api_version.as_deref().map(|v| v.split_once('/')) {
        None => {
            diag.error(&at, Some("apiVersion"), "missing required field");
            return;
        }
        Some(Some((GATEWAY_GROUP, v))) if kind == "HTTPRoute" && GATEWAY_VERSIONS.contains(&v) => {}
        Some(Some((TELEMETRY_GROUP, v)))
            if kind == "Telemetry" && TELEMETRY_VERSIONS.contains(&v) => {}
        Some(Some((TELEMETRY_GROUP, v))) if kind == "Telemetry" => {
            diag.error(
                &at,
                Some("apiVersion"),
                format!("unsupported version {v} (use v1 or v1alpha1)"),
            );
            return;
        }
        Some(Some((GATEWAY_GROUP, v))) if kind == "HTTPRoute" => {
            diag.error(
                &at,
                Some("apiVersion"),
                format!("unsupported version {v} (use v1 or v1beta1)"),
            );
            return;
        }
        Some(Some((SECURITY_GROUP, v))) if security && SECURITY_VERSIONS.contains(&v) => {}
        Some(Some((SECURITY_GROUP, v))) if security => {
            diag.error(
                &at,
                Some("apiVersion"),
                format!("unsupported version {v} (use v1 or v1beta1)"),
            );
            return;
        }
        // Never skipped: a policy the loader would not apply fails open.
        _ if security => {
            diag.error(
                &at,
                Some("apiVersion"),
                format!("{kind} is security.istio.io/v1 (or v1beta1)"),
            );
            return;
        }
        Some(Some((ISTIO_GROUP, v))) if kind != "HTTPRoute" && ISTIO_VERSIONS.contains(&v) => {}
        Some(Some((ISTIO_GROUP, v))) if kind != "HTTPRoute" => {
            diag.error(
                &at,
                Some("apiVersion"),
                format!("unsupported version {v} (use v1, v1beta1 or v1alpha3)"),
            );
            return;
        }
        Some(_) => {
            let v = header.api_version.unwrap_or_default();
            diag.warn(
                &at,
                Some("apiVersion"),
                format!("{v} is not supported for {kind}; document skipped"),
            );
            return;
        }
    }
    let ctx = DocCtx {
        at,
        namespace,
        name,
        text,
        line_offset,
        trust_domain: &options.trust_domain,
        dns: &options.dns,
        annotations: meta.annotations.unwrap_or_default(),
        spec: Cell::new(spec),
    };
    match kind.as_str() {
        "ServiceEntry" => parsed
            .service_entries
            .extend(service_entry::parse(&ctx, diag)),
        "WorkloadEntry" => parsed
            .workload_entries
            .extend(workload_entry::parse(&ctx, diag)),
        "VirtualService" => parsed
            .virtual_services
            .extend(virtual_service::parse(&ctx, diag)),
        "HTTPRoute" => parsed.http_routes.extend(http_route::parse(&ctx, diag)),
        "AuthorizationPolicy" => parsed
            .authorization_policies
            .extend(authorization_policy::parse(&ctx, diag)),
        "RequestAuthentication" => parsed
            .authorization_policies
            .extend(authorization_policy::parse_authn(&ctx, diag)),
        "Telemetry" => parsed.telemetries.extend(telemetry::parse(&ctx, diag)),
        _ => parsed
            .destination_rules
            .extend(destination_rule::parse(&ctx, diag)),
    }
}

/// Parse the `spec` of a document as `S`; reports and returns `None` on error.
/// A type error names the field it is in (`spec.http[0].route[0].weight`).
fn parse_spec<S: DeserializeOwned + 'static>(ctx: &DocCtx<'_>, diag: &mut Diag) -> Option<S> {
    match parse_optional_spec(ctx, diag) {
        Ok(Some(s)) => Some(s),
        Ok(None) => {
            diag.error(&ctx.at, Some("spec"), "missing required field");
            None
        }
        Err(()) => None,
    }
}

/// The `spec` of a document, `None` when it has none; errors are reported (field path kept).
fn parse_optional_spec<S: DeserializeOwned + 'static>(
    ctx: &DocCtx<'_>,
    diag: &mut Diag,
) -> Result<Option<S>, ()> {
    if let Some(spec) = ctx.spec.take() {
        if let Ok(spec) = spec.downcast::<Option<S>>() {
            return Ok(*spec);
        }
    }
    let mut path = None;
    let parsed =
        serde_saphyr::with_deserializer_from_str_with_options(ctx.text, yaml_options(), |de| {
            serde_path_to_error::deserialize::<_, Option<SpecDoc<S>>>(de).map_err(|e| {
                path = Some(e.path().to_string());
                e.into_inner()
            })
        });
    match parsed {
        Ok(doc) => Ok(doc.and_then(|d| d.spec)),
        Err(e) => {
            let field = path
                .filter(|p| p.starts_with("spec"))
                .unwrap_or_else(|| "spec".to_string());
            let e = render(&e, ctx.line_offset);
            diag.error(&ctx.at, Some(&field), format!("invalid: {e}"));
            Err(())
        }
    }
}

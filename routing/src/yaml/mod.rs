//! Istio YAML front-end: ServiceEntry, WorkloadEntry, VirtualService and
//! DestinationRule documents → [`Snapshot`].
//!
//! Loading is two-phase: every document is parsed and checked on its own
//! (field errors), then cross-references are resolved ([`assemble`]).
//! Errors fail the load; unsupported-but-valid Istio fields and unknown kinds
//! become [`Snapshot::warnings`].

mod actions;
mod assemble;
mod destination_rule;
mod diag;
mod docs;
mod fields;
mod http_route;
mod service_entry;
mod virtual_service;
mod workload_entry;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_actions;
#[cfg(test)]
mod tests_errors;
#[cfg(test)]
mod tests_http_route;
#[cfg(test)]
mod tests_matching;

use crate::error::{DocRef, LoadError, LoadErrors};
use crate::snapshot::Snapshot;
use diag::Diag;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::Path;

/// API versions accepted for the `networking.istio.io` kinds.
const ISTIO_GROUP: &str = "networking.istio.io";
const ISTIO_VERSIONS: [&str; 3] = ["v1alpha3", "v1beta1", "v1"];
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
}

/// One document about to be parsed as a known kind.
struct DocCtx<'a> {
    at: DocRef,
    namespace: String,
    name: String,
    text: &'a str,
    trust_domain: &'a str,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<Metadata>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SpecDoc<S> {
    spec: Option<S>,
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { with_snippet: false }
}

/// Load every `*.yaml` / `*.yml` file of `dir` (sorted by name, not recursive).
pub fn load_dir(dir: &Path, trust_domain: &str) -> Result<Snapshot, LoadErrors> {
    let dir_err = |message: String| {
        LoadErrors(vec![LoadError {
            at: DocRef {
                file: dir.display().to_string(),
                ..DocRef::default()
            },
            field: None,
            message,
        }])
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| dir_err(format!("cannot read directory: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| dir_err(format!("cannot read directory: {e}")))?
            .path();
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if is_yaml && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push((name, text)),
            Err(e) => errors.push(LoadError {
                at: DocRef {
                    file: name,
                    ..DocRef::default()
                },
                field: None,
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }
    load_str(&files, trust_domain)
}

/// Load `(file name, content)` pairs, in the given order.
pub fn load_str(files: &[(String, String)], trust_domain: &str) -> Result<Snapshot, LoadErrors> {
    let mut diag = Diag::default();
    let mut parsed = Parsed::default();
    for (file, text) in files {
        for doc in docs::split_documents(text) {
            let at = DocRef {
                file: file.clone(),
                doc: Some(doc.index),
                ..DocRef::default()
            };
            parse_document(at, &doc.text, trust_domain, &mut parsed, &mut diag);
        }
    }
    let builder = assemble::assemble(parsed, &mut diag);
    if !diag.errors.is_empty() {
        return Err(LoadErrors(diag.errors));
    }
    let mut builder = builder;
    for w in diag.warnings {
        builder.warning(w);
    }
    Ok(builder.build())
}

fn parse_document(
    mut at: DocRef,
    text: &str,
    trust_domain: &str,
    parsed: &mut Parsed,
    diag: &mut Diag,
) {
    let header: Option<Header> = match serde_saphyr::from_str_with_options(text, yaml_options()) {
        Ok(h) => h,
        Err(e) => {
            diag.error(&at, None, format!("invalid YAML: {e}"));
            return;
        }
    };
    let Some(header) = header else { return }; // empty document
    let Some(kind) = header.kind else {
        diag.error(&at, Some("kind"), "missing required field");
        return;
    };
    at.kind = Some(kind.clone());
    let known = matches!(
        kind.as_str(),
        "ServiceEntry" | "WorkloadEntry" | "VirtualService" | "DestinationRule" | "HTTPRoute"
    );
    if !known {
        diag.warn(
            &at,
            None,
            format!("kind {kind} is not supported; document skipped"),
        );
        return;
    }
    let meta = header.metadata.unwrap_or(Metadata {
        name: None,
        namespace: None,
    });
    let namespace = meta.namespace.unwrap_or_else(|| "default".to_string());
    let Some(name) = meta.name else {
        diag.error(&at, Some("metadata.name"), "missing required field");
        return;
    };
    at.name = Some(format!("{namespace}/{name}"));
    match header.api_version.as_deref().map(|v| v.split_once('/')) {
        None => {
            diag.error(&at, Some("apiVersion"), "missing required field");
            return;
        }
        Some(Some((GATEWAY_GROUP, v))) if kind == "HTTPRoute" && GATEWAY_VERSIONS.contains(&v) => {}
        Some(Some((GATEWAY_GROUP, v))) if kind == "HTTPRoute" => {
            diag.error(
                &at,
                Some("apiVersion"),
                format!("unsupported version {v} (use v1 or v1beta1)"),
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
        trust_domain,
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
        _ => parsed
            .destination_rules
            .extend(destination_rule::parse(&ctx, diag)),
    }
}

/// Parse the `spec` of a document as `S`; reports and returns `None` on error.
fn parse_spec<S: DeserializeOwned>(ctx: &DocCtx<'_>, diag: &mut Diag) -> Option<S> {
    match serde_saphyr::from_str_with_options::<Option<SpecDoc<S>>>(ctx.text, yaml_options()) {
        Ok(Some(SpecDoc { spec: Some(s) })) => Some(s),
        Ok(_) => {
            diag.error(&ctx.at, Some("spec"), "missing required field");
            None
        }
        Err(e) => {
            diag.error(&ctx.at, Some("spec"), format!("invalid: {e}"));
            None
        }
    }
}

//! Envoy proto3 JSON → [`Resources`] (feature `json`): golden fixtures and
//! the output of `istioctl proxy-config all -o json` / Envoy `/config_dump`.
//!
//! The descriptors of the Envoy protos are compiled at build time from the
//! `.proto` files envoy-types ships (`build.rs`) and embedded; JSON goes
//! through `prost_reflect::DynamicMessage`, is encoded and decoded again as
//! the envoy-types prost structs. `typed_config`s whose `@type` is not among
//! the compiled protos (Istio's own filters, Wasm, …) are kept as an `Any`
//! with that type URL and an empty value, so the translator reports them as
//! unsupported instead of the load failing.

use super::{Resources, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use prost::Message;
use prost_reflect::prost_types::{
    field_descriptor_proto, DescriptorProto, FieldDescriptorProto, FileDescriptorProto,
};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage};
use serde_json::Value;
use std::collections::BTreeSet;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// A JSON document that could not be loaded: where (a JSON path such as
/// `configs[2].dynamic_active_clusters[0].cluster`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct JsonError {
    pub path: String,
    pub message: String,
}

pub(crate) fn err(path: &str, message: impl Into<String>) -> JsonError {
    JsonError {
        path: if path.is_empty() {
            "$".into()
        } else {
            path.into()
        },
        message: message.into(),
    }
}

/// The embedded Envoy descriptors, decoded: built for each use and dropped after it. A decoded
/// pool holds about 11 MiB of heap and takes 12–30 ms to build; the admin's JSON answers and
/// JSON config are rare, so keeping one for the process's life would cost every waypoint that
/// memory for an occasional `/config_dump`.
pub(crate) fn base_pool() -> Result<DescriptorPool, JsonError> {
    DescriptorPool::decode(DESCRIPTORS)
        .map_err(|e| err("", format!("embedded Envoy descriptors: {e}")))
}

/// Load resources from JSON: a typed resource (`{"@type": …Listener, …}`), a
/// list of them, `{"resources": [...]}` (a discovery response) or a config
/// dump (`{"configs": [ListenersConfigDump, ClustersConfigDump, …]}`: the
/// active dynamic resources are taken; what a dump holds that istiod did not
/// send for translation is listed in [`Loaded::skipped`]).
pub fn load_resources(json: &str) -> Result<Resources, JsonError> {
    load(json).map(|l| l.resources)
}

/// What a document held: the resources to translate, and the entries of a
/// config dump that are not translated, each with why.
#[derive(Debug, Default)]
pub struct Loaded {
    pub resources: Resources,
    pub skipped: Vec<Skipped>,
}

/// A config dump entry that is not translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// `Listener`, `Cluster`, `Secret`, `ExtensionConfig`, …
    pub kind: String,
    pub name: String,
    pub why: &'static str,
}

/// [`load_resources`], keeping the list of skipped dump entries.
pub fn load(json: &str) -> Result<Loaded, JsonError> {
    let value: Value = serde_json::from_str(json).map_err(|e| err("", e.to_string()))?;
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    collect(&value, "", &mut found, &mut skipped)?;
    let mut unknown = BTreeSet::new();
    let base = base_pool()?;
    for (_, v) in &found {
        unknown_types(v, &base, &mut unknown);
    }
    let pool = with_placeholders(&base, &unknown)?;
    let mut out = Resources::default();
    for (path, v) in found {
        add(&base, &pool, &path, v, &mut out)?;
    }
    Ok(Loaded {
        resources: out,
        skipped,
    })
}

const RESOURCE_TYPES: [&str; 4] = [LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE];

/// Find the resources in a document.
fn collect<'a>(
    v: &'a Value,
    path: &str,
    out: &mut Vec<(String, &'a Value)>,
    skipped: &mut Vec<Skipped>,
) -> Result<(), JsonError> {
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect(item, &format!("{path}[{i}]"), out, skipped)?;
            }
            Ok(())
        }
        Value::Object(map) => {
            if let Some(t) = map.get("@type").and_then(Value::as_str) {
                if RESOURCE_TYPES.contains(&t) {
                    out.push((path.to_string(), v));
                    return Ok(());
                }
                if t.ends_with("ConfigDump") {
                    config_dump(v, path, out, skipped);
                    return Ok(());
                }
                return Err(err(path, format!("unexpected @type {t}")));
            }
            for key in ["resources", "configs"] {
                if let Some(list) = map.get(key) {
                    return collect(list, &format!("{path}.{key}"), out, skipped);
                }
            }
            Err(err(
                path,
                "expected a typed resource, a list, {\"resources\"} or {\"configs\"}",
            ))
        }
        _ => Err(err(path, "expected an object or a list")),
    }
}

/// A `*ConfigDump` section: take its istiod resources, list the rest.
///
/// Envoy's admin dump also holds what istiod did not send for translation:
/// the bootstrap's static listeners and clusters (stats, health, the xDS and
/// SDS clusters), the inline route configs and load assignments it lists a
/// second time as `static_route_configs` / `static_endpoint_configs` (they are
/// translated with their listener or cluster), secrets, ECDS filters. A
/// resource with a warming (newer) version is translated as that version.
fn config_dump<'a>(
    v: &'a Value,
    path: &str,
    out: &mut Vec<(String, &'a Value)>,
    skipped: &mut Vec<Skipped>,
) {
    let t = v.get("@type").and_then(Value::as_str).unwrap_or_default();
    let dump = t.rsplit('.').next().unwrap_or(t);
    let mut skip = |kind: &str, name: &str, why: &'static str| {
        skipped.push(Skipped {
            kind: kind.to_string(),
            name: name.to_string(),
            why,
        })
    };
    let list = |section: &str| {
        v.get(section)
            .and_then(Value::as_array)
            .map(|l| l.iter().enumerate().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let name_of = |r: &Value| {
        r.get("name")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)")
            .to_string()
    };
    match dump {
        "ListenersConfigDump" => {
            for (_, e) in list("static_listeners") {
                let l = e.get("listener").unwrap_or(&Value::Null);
                skip("Listener", &name_of(l), BOOTSTRAP);
            }
            for (i, e) in list("dynamic_listeners") {
                let name = name_of(e);
                let p = format!("{path}.dynamic_listeners[{i}]");
                let warming = e.get("warming_state").and_then(|s| s.get("listener"));
                let active = e.get("active_state").and_then(|s| s.get("listener"));
                match (warming, active) {
                    (Some(w), a) => {
                        out.push((format!("{p}.warming_state.listener"), w));
                        if a.is_some() {
                            skip("Listener", &name, SUPERSEDED);
                        }
                    }
                    (None, Some(a)) => out.push((format!("{p}.active_state.listener"), a)),
                    (None, None) => {}
                }
                if e.get("draining_state").is_some() {
                    skip("Listener", &name, DRAINING);
                }
                if e.get("error_state").is_some() {
                    skip("Listener", &name, ENVOY_REJECTED);
                }
            }
        }
        "ClustersConfigDump" => {
            for (_, e) in list("static_clusters") {
                let c = e.get("cluster").unwrap_or(&Value::Null);
                skip("Cluster", &name_of(c), BOOTSTRAP);
            }
            let warming: Vec<_> = list("dynamic_warming_clusters")
                .into_iter()
                .filter_map(|(i, e)| Some((i, e.get("cluster")?)))
                .collect();
            let warming_names: BTreeSet<String> = warming.iter().map(|(_, c)| name_of(c)).collect();
            for (i, e) in list("dynamic_active_clusters") {
                let Some(c) = e.get("cluster") else { continue };
                if warming_names.contains(&name_of(c)) {
                    skip("Cluster", &name_of(c), SUPERSEDED);
                } else {
                    out.push((format!("{path}.dynamic_active_clusters[{i}].cluster"), c));
                }
            }
            for (i, c) in warming {
                out.push((format!("{path}.dynamic_warming_clusters[{i}].cluster"), c));
            }
        }
        "RoutesConfigDump" => {
            for (_, e) in list("static_route_configs") {
                let r = e.get("route_config").unwrap_or(&Value::Null);
                skip("RouteConfiguration", &name_of(r), INLINE_ROUTE);
            }
            for (i, e) in list("dynamic_route_configs") {
                if let Some(r) = e.get("route_config") {
                    out.push((format!("{path}.dynamic_route_configs[{i}].route_config"), r));
                }
            }
        }
        "EndpointsConfigDump" => {
            for (_, e) in list("static_endpoint_configs") {
                let c = e.get("endpoint_config").unwrap_or(&Value::Null);
                let name = c
                    .get("cluster_name")
                    .and_then(Value::as_str)
                    .unwrap_or("(unnamed)");
                skip("ClusterLoadAssignment", name, INLINE_ENDPOINTS);
            }
            for (i, e) in list("dynamic_endpoint_configs") {
                if let Some(c) = e.get("endpoint_config") {
                    out.push((
                        format!("{path}.dynamic_endpoint_configs[{i}].endpoint_config"),
                        c,
                    ));
                }
            }
        }
        "SecretsConfigDump" => {
            for section in [
                "static_secrets",
                "dynamic_active_secrets",
                "dynamic_warming_secrets",
            ] {
                for (_, e) in list(section) {
                    skip("Secret", &name_of(e), SECRET);
                }
            }
        }
        "EcdsConfigDump" => {
            for (_, e) in list("ecds_filters") {
                let f = e.get("ecds_filter").unwrap_or(&Value::Null);
                skip("TypedExtensionConfig", &name_of(f), ECDS);
            }
        }
        "BootstrapConfigDump" => skip("Bootstrap", "", BOOTSTRAP_ITSELF),
        "ScopedRoutesConfigDump" => {
            for section in [
                "inline_scoped_route_configs",
                "dynamic_scoped_route_configs",
            ] {
                for (_, e) in list(section) {
                    skip("ScopedRouteConfiguration", &name_of(e), SCOPED);
                }
            }
        }
        other => skip(other, "", NOT_XDS),
    }
}

const BOOTSTRAP: &str = "static, from the Envoy bootstrap (stats, health, xDS/SDS clusters), not \
    sent by istiod; the waypoint serves its own ports";
const SUPERSEDED: &str =
    "superseded by the newer (warming) version istiod sent, which is translated";
const DRAINING: &str = "an older version Envoy is draining";
const ENVOY_REJECTED: &str =
    "an update Envoy rejected (error_state); the active version is translated";
const INLINE_ROUTE: &str = "inline route config of a listener, which Envoy lists again here; \
    translated with its listener";
const INLINE_ENDPOINTS: &str =
    "inline load_assignment of a cluster, which Envoy lists again here; \
    translated with its cluster";
const SECRET: &str = "SDS secret: the waypoint uses its own certificate files and roots";
const ECDS: &str = "ECDS extension config (e.g. a WasmPlugin): not run; a chain naming it denies \
    every request";
const BOOTSTRAP_ITSELF: &str =
    "the Envoy bootstrap: the waypoint takes its node identity from its \
    own flags and pod environment";
const SCOPED: &str = "scoped routes: istiod does not send them to waypoints";
const NOT_XDS: &str = "not a resource type of istiod's waypoint config";

/// Every `@type` under `v` that the pool does not know.
fn unknown_types(v: &Value, pool: &DescriptorPool, out: &mut BTreeSet<String>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| unknown_types(i, pool, out)),
        Value::Object(map) => {
            if let Some(t) = map.get("@type").and_then(Value::as_str) {
                let name = t.rsplit('/').next().unwrap_or(t);
                if pool.get_message_by_name(name).is_none() {
                    out.insert(name.to_string());
                }
            }
            map.values().for_each(|x| unknown_types(x, pool, out));
        }
        _ => {}
    }
}

/// The pool plus an empty message for each unknown type.
pub(crate) fn with_placeholders(
    pool: &DescriptorPool,
    unknown: &BTreeSet<String>,
) -> Result<DescriptorPool, JsonError> {
    let mut pool = pool.clone();
    for (i, full) in unknown.iter().enumerate() {
        let (package, name) = full.rsplit_once('.').unwrap_or(("", full.as_str()));
        let file = FileDescriptorProto {
            name: Some(format!("placeholder/{i}.proto")),
            package: (!package.is_empty()).then(|| package.to_string()),
            message_type: vec![DescriptorProto {
                name: Some(name.to_string()),
                field: if is_typed_struct(name) {
                    vec![typed_struct_type_url()]
                } else {
                    Vec::new()
                },
                ..Default::default()
            }],
            syntax: Some("proto3".into()),
            ..Default::default()
        };
        pool.add_file_descriptor_proto(file)
            .map_err(|e| err("", format!("@type {full}: {e}")))?;
    }
    Ok(pool)
}

/// `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct`: istiod wraps its own
/// filters' configs in one (e.g. `istio.stats` as `stats.PluginConfig`). Their
/// protos are not among those envoy-types ships, so the placeholder keeps field
/// 1, the wrapped config's type URL, for the translator to classify the filter.
fn is_typed_struct(name: &str) -> bool {
    name == "TypedStruct"
}

fn typed_struct_type_url() -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some("type_url".into()),
        number: Some(1),
        label: Some(field_descriptor_proto::Label::Optional as i32),
        r#type: Some(field_descriptor_proto::Type::String as i32),
        json_name: Some("typeUrl".into()),
        ..Default::default()
    }
}

/// Drop the fields of Any objects whose type is a placeholder (a TypedStruct
/// keeps its `type_url`).
fn strip_unknown(v: &Value, unknown: &dyn Fn(&str) -> bool) -> Value {
    match v {
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| strip_unknown(i, unknown)).collect())
        }
        Value::Object(map) => {
            if let Some(t) = map.get("@type").and_then(Value::as_str) {
                let name = t.rsplit('/').next().unwrap_or(t);
                if unknown(name) {
                    let mut m = serde_json::Map::new();
                    m.insert("@type".into(), Value::String(t.to_string()));
                    if is_typed_struct(name.rsplit('.').next().unwrap_or(name)) {
                        for key in ["type_url", "typeUrl"] {
                            if let Some(u @ Value::String(_)) = map.get(key) {
                                m.insert(key.into(), u.clone());
                            }
                        }
                    }
                    return Value::Object(m);
                }
            }
            Value::Object(
                map.iter()
                    .map(|(k, x)| (k.clone(), strip_unknown(x, unknown)))
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

/// `v` (at `path`) decoded with `pool` into `out`; fields of types `base` (the embedded
/// descriptors alone) does not know are left out.
fn add(
    base: &DescriptorPool,
    pool: &DescriptorPool,
    path: &str,
    v: &Value,
    out: &mut Resources,
) -> Result<(), JsonError> {
    let mut obj = v.clone();
    let type_url = obj.get("@type").and_then(Value::as_str).map(str::to_string);
    if let Value::Object(m) = &mut obj {
        m.remove("@type");
    }
    let is_unknown = |name: &str| base.get_message_by_name(name).is_none();
    let obj = strip_unknown(&obj, &is_unknown);
    let (type_url, msg_name) = match type_url {
        Some(t) => {
            let name = t.rsplit('/').next().unwrap_or(&t).to_string();
            (t, name)
        }
        None => return Err(err(path, "resource without @type")),
    };
    let desc = pool
        .get_message_by_name(&msg_name)
        .ok_or_else(|| err(path, format!("unknown type {msg_name}")))?;
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let msg = DynamicMessage::deserialize_with_options(desc, obj, &options)
        .map_err(|e| err(path, e.to_string()))?;
    let bytes = msg.encode_to_vec();
    let decode_err = |e: prost::DecodeError| err(path, e.to_string());
    match type_url.as_str() {
        LISTENER_TYPE => out
            .listeners
            .push(Message::decode(bytes.as_slice()).map_err(decode_err)?),
        CLUSTER_TYPE => out
            .clusters
            .push(Message::decode(bytes.as_slice()).map_err(decode_err)?),
        ENDPOINT_TYPE => out
            .endpoints
            .push(Message::decode(bytes.as_slice()).map_err(decode_err)?),
        ROUTE_TYPE => out
            .routes
            .push(Message::decode(bytes.as_slice()).map_err(decode_err)?),
        other => return Err(err(path, format!("unexpected @type {other}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_path() {
        let e = load_resources(r#"[{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "a", "bogus": 1}]"#)
            .unwrap_err();
        assert_eq!(e.path, "[0]");
        assert!(e.message.contains("bogus"), "{e}");
        let e = load_resources(r#"{"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": [{"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": 5}}]}]}"#)
            .unwrap_err();
        assert_eq!(e.path, ".configs[0].dynamic_active_clusters[0].cluster");
        assert!(load_resources("{").is_err());
        assert!(load_resources("3").is_err());
    }

    #[test]
    fn unknown_typed_config_is_kept_as_empty_any() {
        let r = load_resources(
            r#"[{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "c",
                "typed_extension_protocol_options": {"x": {"@type": "type.googleapis.com/acme.Thing", "a": 1}}}]"#,
        )
        .unwrap();
        let any = &r.clusters[0].typed_extension_protocol_options["x"];
        assert_eq!(any.type_url, "type.googleapis.com/acme.Thing");
        assert!(any.value.is_empty());
    }

    #[test]
    fn a_typed_struct_keeps_the_wrapped_type_url() {
        let r = load_resources(
            r#"[{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "c",
                "typed_extension_protocol_options": {"x": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                "type_url": "type.googleapis.com/stats.PluginConfig", "value": {"reporter": "SERVER_GATEWAY"}}}}]"#,
        )
        .unwrap();
        let any = &r.clusters[0].typed_extension_protocol_options["x"];
        assert_eq!(
            super::super::access::effective_type(any),
            "type.googleapis.com/stats.PluginConfig"
        );
    }

    #[test]
    fn config_dump_entries_istiod_did_not_send_are_listed_not_translated() {
        let cluster = |name: &str, v: &str| {
            format!(
                r#"{{"cluster": {{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "{name}", "connect_timeout": "{v}"}}}}"#
            )
        };
        let json = format!(
            r#"{{"configs": [
              {{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "static_clusters": [{}],
                "dynamic_active_clusters": [{}, {}],
                "dynamic_warming_clusters": [{}]}},
              {{"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
                "dynamic_active_secrets": [{{"name": "default"}}]}},
              {{"@type": "type.googleapis.com/envoy.admin.v3.EcdsConfigDump",
                "ecds_filters": [{{"ecds_filter": {{"name": "wasm-a"}}}}]}}
            ]}}"#,
            cluster("xds-grpc", "1s"),
            cluster("a", "1s"),
            cluster("b", "1s"),
            cluster("a", "2s"),
        );
        let l = load(&json).unwrap();
        let clusters: Vec<(&str, i64)> = l
            .resources
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.connect_timeout.unwrap().seconds))
            .collect();
        // The warming version of `a` (newer) is translated, its active one is not.
        assert_eq!(clusters, vec![("b", 1), ("a", 2)]);
        let skipped: Vec<(&str, &str)> = l
            .skipped
            .iter()
            .map(|s| (s.kind.as_str(), s.name.as_str()))
            .collect();
        assert_eq!(
            skipped,
            vec![
                ("Cluster", "xds-grpc"),
                ("Cluster", "a"),
                ("Secret", "default"),
                ("TypedExtensionConfig", "wasm-a"),
            ]
        );
        assert_eq!(l.skipped[1].why, SUPERSEDED);
    }
}

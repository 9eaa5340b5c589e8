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
use prost_reflect::prost_types::{DescriptorProto, FileDescriptorProto};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::OnceLock;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// A JSON document that could not be loaded: where (a JSON path such as
/// `configs[2].dynamic_active_clusters[0].cluster`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct JsonError {
    pub path: String,
    pub message: String,
}

fn err(path: &str, message: impl Into<String>) -> JsonError {
    JsonError {
        path: if path.is_empty() {
            "$".into()
        } else {
            path.into()
        },
        message: message.into(),
    }
}

fn base_pool() -> Result<&'static DescriptorPool, JsonError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| err("", format!("embedded Envoy descriptors: {e}")))
}

/// Load resources from JSON: a typed resource (`{"@type": …Listener, …}`), a
/// list of them, `{"resources": [...]}` (a discovery response) or a config
/// dump (`{"configs": [ListenersConfigDump, ClustersConfigDump, …]}`: the
/// active dynamic and the static resources are taken; the rest is ignored).
pub fn load_resources(json: &str) -> Result<Resources, JsonError> {
    let value: Value = serde_json::from_str(json).map_err(|e| err("", e.to_string()))?;
    let mut found = Vec::new();
    collect(&value, "", &mut found)?;
    let mut unknown = BTreeSet::new();
    let pool = base_pool()?;
    for (_, v) in &found {
        unknown_types(v, pool, &mut unknown);
    }
    let pool = with_placeholders(pool, &unknown)?;
    let mut out = Resources::default();
    for (path, v) in found {
        add(&pool, &path, v, &mut out)?;
    }
    Ok(out)
}

const RESOURCE_TYPES: [&str; 4] = [LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE];

/// Find the resources in a document.
fn collect<'a>(
    v: &'a Value,
    path: &str,
    out: &mut Vec<(String, &'a Value)>,
) -> Result<(), JsonError> {
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect(item, &format!("{path}[{i}]"), out)?;
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
                    return config_dump(v, path, out);
                }
                return Err(err(path, format!("unexpected @type {t}")));
            }
            for key in ["resources", "configs"] {
                if let Some(list) = map.get(key) {
                    return collect(list, &format!("{path}.{key}"), out);
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

/// `*ConfigDump` sections: (list field, wrapper field holding the resource).
fn config_dump<'a>(
    v: &'a Value,
    path: &str,
    out: &mut Vec<(String, &'a Value)>,
) -> Result<(), JsonError> {
    const SECTIONS: &[(&str, &[&str], &str)] = &[
        ("static_listeners", &["listener"], LISTENER_TYPE),
        (
            "dynamic_listeners",
            &["active_state", "listener"],
            LISTENER_TYPE,
        ),
        ("static_clusters", &["cluster"], CLUSTER_TYPE),
        ("dynamic_active_clusters", &["cluster"], CLUSTER_TYPE),
        ("static_route_configs", &["route_config"], ROUTE_TYPE),
        ("dynamic_route_configs", &["route_config"], ROUTE_TYPE),
        (
            "static_endpoint_configs",
            &["endpoint_config"],
            ENDPOINT_TYPE,
        ),
        (
            "dynamic_endpoint_configs",
            &["endpoint_config"],
            ENDPOINT_TYPE,
        ),
    ];
    for (section, inner, _) in SECTIONS {
        let Some(list) = v.get(*section).and_then(Value::as_array) else {
            continue;
        };
        for (i, item) in list.iter().enumerate() {
            let mut cur = item;
            let mut p = format!("{path}.{section}[{i}]");
            let mut ok = true;
            for key in *inner {
                match cur.get(*key) {
                    Some(next) => {
                        cur = next;
                        p = format!("{p}.{key}");
                    }
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            // A listener without an active state (warming/draining) is skipped.
            if ok {
                out.push((p, cur));
            }
        }
    }
    Ok(())
}

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
fn with_placeholders(
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

/// Drop the fields of Any objects whose type is a placeholder.
fn strip_unknown(v: &Value, unknown: &dyn Fn(&str) -> bool) -> Value {
    match v {
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| strip_unknown(i, unknown)).collect())
        }
        Value::Object(map) => {
            if let Some(t) = map.get("@type").and_then(Value::as_str) {
                if unknown(t.rsplit('/').next().unwrap_or(t)) {
                    let mut m = serde_json::Map::new();
                    m.insert("@type".into(), Value::String(t.to_string()));
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

fn add(pool: &DescriptorPool, path: &str, v: &Value, out: &mut Resources) -> Result<(), JsonError> {
    let mut obj = v.clone();
    let type_url = obj.get("@type").and_then(Value::as_str).map(str::to_string);
    if let Value::Object(m) = &mut obj {
        m.remove("@type");
    }
    let base = base_pool()?;
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
}

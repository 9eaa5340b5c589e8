//! Envoy protos → proto3 JSON as Envoy's admin writes it (original field names, `@type` on
//! every `Any`): the waypoint's `/config_dump`, `/clusters?format=json`, `/server_info`,
//! `/certs` and `/memory`, readable by `istioctl proxy-config`.
//!
//! An `Any` whose type is not among the embedded Envoy protos (Istio's own filters, Wasm) is
//! written with its `@type` and no fields: its bytes cannot be rendered without its schema.

use super::json::{base_pool, err, with_placeholders, JsonError};
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, SerializeOptions, Value};
use serde_json::Value as Json;
use std::collections::BTreeSet;

const ANY: &str = "google.protobuf.Any";

/// `message` (an envoy-types prost struct) as Envoy's admin JSON, fields at their default
/// value left out (as in Envoy's `/config_dump`).
pub fn to_json<M: prost::Message + prost::Name>(message: &M) -> Result<Json, JsonError> {
    encoded_to_json(&M::full_name(), &message.encode_to_vec(), true)
}

/// [`to_json`] with every primitive field written, default or not (as Envoy writes
/// `/server_info` and `/clusters?format=json`: `"state": "LIVE"` is the enum's zero).
pub fn to_json_with_defaults<M: prost::Message + prost::Name>(
    message: &M,
) -> Result<Json, JsonError> {
    encoded_to_json(&M::full_name(), &message.encode_to_vec(), false)
}

/// The message `full_name` encoded as `bytes`, as Envoy's admin JSON.
pub fn encoded_to_json(
    full_name: &str,
    bytes: &[u8],
    skip_defaults: bool,
) -> Result<Json, JsonError> {
    let base = base_pool()?;
    let decode = |pool: &DescriptorPool| {
        let desc = pool
            .get_message_by_name(full_name)
            .ok_or_else(|| err("", format!("{full_name} is not among the embedded protos")))?;
        DynamicMessage::decode(desc, bytes).map_err(|e| err("", format!("{full_name}: {e}")))
    };
    let mut unknown = BTreeSet::new();
    unknown_anys(&decode(&base)?, &base, &mut unknown);
    let pool = with_placeholders(&base, &unknown)?;
    let message = decode(&pool)?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(skip_defaults);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| err("", format!("{full_name}: {e}")))
}

/// The full names of the types of every `Any` under `message` (inside known ones too) that
/// `pool` does not know.
fn unknown_anys(message: &DynamicMessage, pool: &DescriptorPool, out: &mut BTreeSet<String>) {
    if message.descriptor().full_name() == ANY {
        let type_url = match message.get_field_by_name("type_url").as_deref() {
            Some(Value::String(s)) => s.clone(),
            _ => return,
        };
        let name = type_url.rsplit('/').next().unwrap_or(&type_url).to_string();
        match pool.get_message_by_name(&name) {
            Some(desc) => {
                if let Some(Value::Bytes(b)) = message.get_field_by_name("value").as_deref() {
                    if let Ok(inner) = DynamicMessage::decode(desc, b.as_ref()) {
                        unknown_anys(&inner, pool, out);
                    }
                }
            }
            None => {
                out.insert(name);
            }
        }
        return;
    }
    for (_, value) in message.fields() {
        each_message(value, &mut |m| unknown_anys(m, pool, out));
    }
}

fn each_message(value: &Value, f: &mut dyn FnMut(&DynamicMessage)) {
    match value {
        Value::Message(m) => f(m),
        Value::List(items) => items.iter().for_each(|v| each_message(v, f)),
        Value::Map(map) => map.values().for_each(|v| each_message(v, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::google::protobuf::Any;

    #[test]
    fn messages_render_with_envoys_field_names_and_typed_anys() {
        let cluster = Cluster {
            name: "outbound|9080||reviews.default.svc.cluster.local".into(),
            ..Default::default()
        };
        let v = to_json(&cluster).unwrap();
        assert_eq!(
            v["name"],
            "outbound|9080||reviews.default.svc.cluster.local"
        );
        // An Any of a type the pool lacks keeps its @type (and nothing else).
        let any = Any {
            type_url: "type.googleapis.com/istio.example.v1.Unknown".into(),
            value: vec![10, 1, b'x'],
        };
        let mut cluster = cluster;
        cluster
            .typed_extension_protocol_options
            .insert("x".into(), any);
        let v = to_json(&cluster).unwrap();
        assert_eq!(
            v["typed_extension_protocol_options"]["x"],
            serde_json::json!({"@type": "type.googleapis.com/istio.example.v1.Unknown"})
        );
    }
}

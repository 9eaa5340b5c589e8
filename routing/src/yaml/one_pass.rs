//! A document parsed once: its header and, when `kind` comes before `spec`, the spec as that
//! kind's type ([`one_pass`]); anything unusual falls back to the two-pass parse in `mod.rs`.

use std::any::Any;
use std::collections::BTreeMap;

use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{
    destination_rule, http_route, service_entry, telemetry, virtual_service, workload_entry,
    yaml_options, Header, Metadata,
};

/// A document's header and, when its `kind` comes before its `spec` (as Kubernetes writes
/// them), the spec parsed as that kind's type: the document is parsed once instead of twice
/// (header, then spec with field paths). Only for documents that parse without error and
/// have no unknown top-level key: any error, duplicate or unknown key makes [`one_pass`]
/// return `None`, and the document goes the two-pass way, which words the diagnostics.
pub(super) struct OnePass {
    pub(super) header: Header,
    /// A boxed `Option<S>` for the spec type `S` of the document's kind.
    pub(super) spec: Option<Box<dyn Any>>,
}

/// [`OnePass`] of a document: `Some(None)` for an empty document, `None` when the document
/// is to be parsed in two passes.
pub(super) fn one_pass(text: &str) -> Option<Option<OnePass>> {
    serde_saphyr::from_str_with_options::<Option<OnePass>>(text, yaml_options()).ok()
}

/// A top-level key of a document.
enum TopKey {
    ApiVersion,
    Kind,
    Metadata,
    Spec,
    Status,
}

impl<'de> Deserialize<'de> for TopKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TopKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a top-level field")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TopKey, E> {
                Ok(match v {
                    "apiVersion" => TopKey::ApiVersion,
                    "kind" => TopKey::Kind,
                    "metadata" => TopKey::Metadata,
                    "spec" => TopKey::Spec,
                    "status" => TopKey::Status,
                    // Reported by the two-pass path.
                    _ => return Err(E::custom("unknown field")),
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// Deserializes a `spec` as the spec type of `kind` into a boxed `Option<S>`; the spec of
/// another kind (or of a document whose `kind` comes later) is skipped (`None`).
struct SpecSeed<'k>(Option<&'k str>);

fn boxed_spec<'de, S: DeserializeOwned + 'static, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Box<dyn Any>>, D::Error> {
    Ok(Some(Box::new(Option::<S>::deserialize(d)?)))
}

impl<'de> DeserializeSeed<'de> for SpecSeed<'_> {
    type Value = Option<Box<dyn Any>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        use crate::authz::{istio::AuthorizationPolicySpec, jwt::RequestAuthenticationSpec};
        match self.0 {
            Some("ServiceEntry") => boxed_spec::<service_entry::Spec, D>(d),
            Some("WorkloadEntry") => boxed_spec::<workload_entry::Spec, D>(d),
            Some("VirtualService") => boxed_spec::<virtual_service::Spec, D>(d),
            Some("DestinationRule") => boxed_spec::<destination_rule::Spec, D>(d),
            Some("HTTPRoute") => boxed_spec::<http_route::Spec, D>(d),
            Some("AuthorizationPolicy") => boxed_spec::<AuthorizationPolicySpec, D>(d),
            Some("RequestAuthentication") => boxed_spec::<RequestAuthenticationSpec, D>(d),
            Some("Telemetry") => boxed_spec::<telemetry::Spec, D>(d),
            _ => IgnoredAny::deserialize(d).map(|_| None),
        }
    }
}

impl<'de> Deserialize<'de> for OnePass {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OnePass;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a document")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OnePass, A::Error> {
                use serde::de::Error;
                let mut api_version: Option<Option<String>> = None;
                let mut kind: Option<Option<String>> = None;
                let mut metadata: Option<Option<Metadata>> = None;
                let mut spec: Option<Option<Box<dyn Any>>> = None;
                let mut status: Option<Option<IgnoredAny>> = None;
                fn once<T, E: Error>(slot: &Option<T>) -> Result<(), E> {
                    match slot {
                        Some(_) => Err(E::custom("duplicate field")),
                        None => Ok(()),
                    }
                }
                while let Some(key) = map.next_key::<TopKey>()? {
                    match key {
                        TopKey::ApiVersion => {
                            once(&api_version)?;
                            api_version = Some(map.next_value()?);
                        }
                        TopKey::Kind => {
                            once(&kind)?;
                            kind = Some(map.next_value()?);
                        }
                        TopKey::Metadata => {
                            once(&metadata)?;
                            metadata = Some(map.next_value()?);
                        }
                        TopKey::Spec => {
                            once(&spec)?;
                            let k = kind.as_ref().and_then(|k| k.as_deref());
                            spec = Some(map.next_value_seed(SpecSeed(k))?);
                        }
                        TopKey::Status => {
                            once(&status)?;
                            status = Some(map.next_value()?);
                        }
                    }
                }
                let spec = spec.flatten();
                Ok(OnePass {
                    header: Header {
                        api_version: api_version.flatten(),
                        kind: kind.flatten(),
                        metadata: metadata.flatten(),
                        // Not read (the header's spec only stands for the key).
                        spec: None,
                        status: status.flatten(),
                        extra: BTreeMap::new(),
                    },
                    spec,
                })
            }
        }
        d.deserialize_map(V)
    }
}

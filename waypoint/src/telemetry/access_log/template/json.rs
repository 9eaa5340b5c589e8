//! Envoy's `json_format`, compiled: keys pre-escaped, values text templates written as JSON.

use super::{into_string, Template, TemplateError};
use crate::telemetry::access_log::entry::{Entry, Line};

/// A compiled Envoy `json_format`: keys in the order given, values text templates, nested
/// objects, or JSON constants written as is.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonTemplate {
    fields: Vec<(String, JsonValue)>,
}

// Keys are stored as written in the line: `"key":`, escaped once at compile time.

#[derive(Debug, Clone, PartialEq)]
enum JsonValue {
    Template(Template),
    Object(Vec<(String, JsonValue)>),
    /// A number, boolean or null from the format, written back verbatim.
    Constant(String),
}

/// The json_format object as parsed, order kept.
enum RawJson {
    Str(String),
    Obj(Vec<(String, RawJson)>),
    Constant(String),
}

impl<'de> serde::Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawJson;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, an object, a number, a boolean or null")
            }
            fn visit_str<E>(self, v: &str) -> Result<RawJson, E> {
                Ok(RawJson::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<RawJson, E> {
                Ok(RawJson::Str(v))
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawJson, E> {
                Ok(RawJson::Constant(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawJson, E> {
                Ok(RawJson::Constant(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawJson, E> {
                Ok(RawJson::Constant(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawJson, E> {
                serde_json::to_string(&v)
                    .map(RawJson::Constant)
                    .map_err(E::custom)
            }
            fn visit_unit<E>(self) -> Result<RawJson, E> {
                Ok(RawJson::Constant("null".into()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<RawJson, A::Error> {
                Err(serde::de::Error::custom("arrays are not supported"))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawJson, A::Error> {
                let mut fields: Vec<(String, RawJson)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, RawJson>()? {
                    if fields.iter().any(|(existing, _)| *existing == k) {
                        return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
                    }
                    fields.push((k, v));
                }
                Ok(RawJson::Obj(fields))
            }
        }
        d.deserialize_any(V)
    }
}

fn compile_object(raw: Vec<(String, RawJson)>) -> Result<Vec<(String, JsonValue)>, TemplateError> {
    raw.into_iter()
        .map(|(k, v)| {
            let compiled = match v {
                RawJson::Str(s) => Template::parse(&s).map(JsonValue::Template),
                RawJson::Obj(o) => compile_object(o).map(JsonValue::Object),
                RawJson::Constant(c) => Ok(JsonValue::Constant(c)),
            };
            match compiled {
                // Serializing a str cannot fail.
                Ok(c) => Ok((
                    format!("{}:", serde_json::to_string(&k).unwrap_or_default()),
                    c,
                )),
                Err(e) => Err(TemplateError::InJsonKey {
                    key: k,
                    source: Box::new(e),
                }),
            }
        })
        .collect()
}

fn render_object(fields: &[(String, JsonValue)], e: &Line<'_>, out: &mut Vec<u8>) {
    out.push(b'{');
    for (n, (key, v)) in fields.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(key.as_bytes());
        match v {
            JsonValue::Template(t) => t.write_json(e, out),
            JsonValue::Object(o) => render_object(o, e, out),
            JsonValue::Constant(c) => out.extend_from_slice(c.as_bytes()),
        }
    }
    out.push(b'}');
}

fn visit_templates<'a>(fields: &'a [(String, JsonValue)], f: &mut dyn FnMut(&'a Template)) {
    for (_, v) in fields {
        match v {
            JsonValue::Template(t) => f(t),
            JsonValue::Object(o) => visit_templates(o, f),
            JsonValue::Constant(_) => {}
        }
    }
}

impl JsonTemplate {
    /// Compiles a json_format object string, e.g. `{"code":"%RESPONSE_CODE%"}`.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let raw: RawJson =
            serde_json::from_str(src).map_err(|e| TemplateError::Json(e.to_string()))?;
        match raw {
            RawJson::Obj(fields) => Ok(Self {
                fields: compile_object(fields)?,
            }),
            _ => Err(TemplateError::Json(
                "expected a JSON object mapping keys to format strings".into(),
            )),
        }
    }

    /// Renders one JSON object (one line).
    pub fn render(&self, e: &Entry) -> String {
        let mut out = Vec::with_capacity(512);
        self.write(&e.line(), &mut out);
        into_string(out)
    }

    /// Appends one JSON object (one line).
    pub fn write(&self, e: &Line<'_>, out: &mut Vec<u8>) {
        render_object(&self.fields, e, out);
    }

    /// Lowercase request headers the templates read that [`Entry`] has no field for.
    pub fn request_headers(&self) -> Vec<String> {
        self.headers().0
    }

    /// Lowercase response headers the templates read that [`Entry`] has no field for.
    pub fn response_headers(&self) -> Vec<String> {
        self.headers().1
    }

    fn headers(&self) -> (Vec<String>, Vec<String>) {
        let (mut req, mut resp) = (Vec::new(), Vec::new());
        visit_templates(&self.fields, &mut |t| {
            t.collect_headers(&mut req, &mut resp)
        });
        (req, resp)
    }
}

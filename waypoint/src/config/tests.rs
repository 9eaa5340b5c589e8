use std::collections::HashMap;

use super::env::*;
use super::*;

/// An environment of these variables only, for the parsers that read one through a closure.
pub(crate) fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn an_empty_environment_gives_the_defaults() {
    assert_eq!(RunConfig::from_env(env(&[])).unwrap(), RunConfig::default());
    // Empty counts as unset.
    assert_eq!(
        RunConfig::from_env(env(&[(WAYPOINT_THREADS, ""), (WAYPOINT_LISTEN, "")])).unwrap(),
        RunConfig::default()
    );
}

#[test]
fn a_bad_value_names_the_variable_the_value_and_why() {
    for (name, value, reason) in [
        (WAYPOINT_THREADS, "lots", "invalid digit"),
        (WAYPOINT_ADMIN_LISTEN, "nope", "is not ip:port or `none`"),
        (WAYPOINT_UPSTREAM_MAX_CONNECTIONS, "0", "less than 1"),
        (
            WAYPOINT_CERT_RENEW_FRACTION,
            "1.5",
            "strictly between 0 and 1",
        ),
        (XDS_MODE, "push", "not delta, sotw or auto"),
        (WAYPOINT_GATEWAY, "waypoint", "not NAMESPACE/NAME"),
        (WAYPOINT_ALLOW_EMPTY_CONFIG, "maybe", "not true or false"),
        (WAYPOINT_ACCESS_LOG_FORMAT, "xml", "not text or json"),
    ] {
        let err = RunConfig::from_env(env(&[(name, value)])).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Invalid {
                name,
                value: value.into(),
                reason: err_reason(&err),
            }
        );
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("environment variable {name}={value:?}: "))
                && text.contains(reason),
            "{text}"
        );
    }
}

fn err_reason(e: &ConfigError) -> String {
    match e {
        ConfigError::Invalid { reason, .. } => reason.clone(),
        other => panic!("not an invalid value: {other}"),
    }
}

#[test]
fn two_config_sources_are_refused() {
    let err = RunConfig::from_env(env(&[
        (WAYPOINT_CONFIG_DIR, "/c"),
        (XDS_ADDRESS, "istiod:15012"),
    ]))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variables WAYPOINT_CONFIG_DIR and XDS_ADDRESS are both set: give only one"
    );
}

#[test]
fn listen_display_parses_back() {
    for l in [DEFAULT_ADMIN_LISTEN, DEFAULT_PROM_LISTEN, ENVOY_PROM_LISTEN] {
        assert_eq!(l.to_string().parse::<Listen>(), Ok(l));
    }
    for m in [XdsMode::Delta, XdsMode::Sotw, XdsMode::Auto] {
        assert_eq!(m.to_string().parse::<XdsMode>(), Ok(m));
    }
}

//! `DestinationRule` documents (load-balancer policy and subsets).

use super::diag::{Diag, Extra};
use super::{parse_spec, DocCtx};
use crate::error::DocRef;
use crate::hosts::expand_host;
use crate::model::{DestinationRule, LbPolicy, Subset};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    host: Option<String>,
    traffic_policy: Option<TrafficPolicyY>,
    subsets: Option<Vec<SubsetY>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrafficPolicyY {
    load_balancer: Option<LoadBalancerY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct LoadBalancerY {
    simple: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubsetY {
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    traffic_policy: Option<TrafficPolicyY>,
    #[serde(flatten)]
    extra: Extra,
}

/// A checked DestinationRule; the host is expanded but not yet resolved.
#[derive(Debug)]
pub(crate) struct DestinationRuleIr {
    pub at: DocRef,
    pub dr: DestinationRule,
}

pub(crate) fn parse(ctx: &DocCtx<'_>, diag: &mut Diag) -> Option<DestinationRuleIr> {
    let spec: Spec = parse_spec(ctx, diag)?;
    let at = &ctx.at;
    let errors_before = diag.errors.len();
    diag.unsupported(at, "spec.", &spec.extra, &[]);
    let host = diag.required(at, "spec.host", spec.host);
    let lb = spec
        .traffic_policy
        .and_then(|tp| traffic_policy(at, "spec.trafficPolicy", tp, diag));
    let mut subsets: Vec<Subset> = Vec::new();
    for (i, s) in spec.subsets.unwrap_or_default().into_iter().enumerate() {
        let f = format!("spec.subsets[{i}]");
        diag.unsupported(at, &format!("{f}."), &s.extra, &[]);
        let lb = s
            .traffic_policy
            .and_then(|tp| traffic_policy(at, &format!("{f}.trafficPolicy"), tp, diag));
        let Some(name) = diag.required(at, &format!("{f}.name"), s.name) else {
            continue;
        };
        if subsets.iter().any(|o| o.name == name) {
            diag.error(
                at,
                Some(&format!("{f}.name")),
                format!("duplicate subset {name}"),
            );
            continue;
        }
        subsets.push(Subset {
            name,
            labels: s.labels.unwrap_or_default(),
            lb,
        });
    }
    if diag.errors.len() > errors_before {
        return None;
    }
    Some(DestinationRuleIr {
        at: at.clone(),
        dr: DestinationRule {
            namespace: ctx.namespace.clone(),
            name: ctx.name.clone(),
            host: expand_host(&host?, &ctx.namespace),
            lb,
            subsets,
        },
    })
}

fn traffic_policy(at: &DocRef, f: &str, tp: TrafficPolicyY, diag: &mut Diag) -> Option<LbPolicy> {
    diag.unsupported(at, &format!("{f}."), &tp.extra, &[]);
    let lb = tp.load_balancer?;
    let lf = format!("{f}.loadBalancer");
    diag.unsupported(at, &format!("{lf}."), &lb.extra, &[]);
    let simple = lb.simple?;
    match simple.to_ascii_uppercase().as_str() {
        "ROUND_ROBIN" => Some(LbPolicy::RoundRobin),
        "RANDOM" => Some(LbPolicy::Random),
        "LEAST_REQUEST" | "LEAST_CONN" => Some(LbPolicy::LeastRequest),
        "UNSPECIFIED" => None,
        other => {
            diag.warn(
                at,
                Some(&format!("{lf}.simple")),
                format!("{other} is not supported yet; using LEAST_REQUEST"),
            );
            Some(LbPolicy::LeastRequest)
        }
    }
}

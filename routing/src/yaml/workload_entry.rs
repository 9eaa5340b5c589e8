//! `WorkloadEntry` documents.

use super::diag::{Diag, Extra};
use super::schema;
use super::{parse_spec, DocCtx};
use crate::model::{spiffe_identity, Endpoint};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Spec {
    address: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    service_account: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

/// A checked WorkloadEntry.
#[derive(Debug)]
pub(crate) struct WorkloadEntryIr {
    pub endpoint: Endpoint,
}

pub(crate) fn parse(ctx: &DocCtx<'_>, diag: &mut Diag) -> Option<WorkloadEntryIr> {
    let spec: Spec = parse_spec(ctx, diag)?;
    let at = &ctx.at;
    diag.unsupported(at, "spec.", &spec.extra, schema::WORKLOAD_ENTRY, &[]);
    let address = diag.required(at, "spec.address", spec.address)?;
    let address = diag.ip(at, "spec.address", &address)?;
    let sa = spec
        .service_account
        .unwrap_or_else(|| "default".to_string());
    let labels = spec.labels.unwrap_or_default();
    Some(WorkloadEntryIr {
        endpoint: Endpoint {
            address,
            transport: crate::model::transport_of(&labels),
            labels: std::sync::Arc::new(labels.into()),
            workload: std::sync::Arc::new(crate::model::Workload::new(
                ctx.name.as_str().into(),
                ctx.namespace.as_str().into(),
                sa.as_str().into(),
                spiffe_identity(ctx.trust_domain, &ctx.namespace, &sa).into(),
            )),
        },
    })
}

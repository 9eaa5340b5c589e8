//! `waypoint certs`: a test CA and SPIFFE workload certificates shaped like Istio's, written in
//! the file layout `waypoint run --cert-chain/--key/--trust-bundle` (and istio-proxy) reads. For
//! trying the waypoint on files and for `waypoint curl`; a mesh gets its certificates from
//! istiod's CA (`--cert-provider istiod`).

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::control::identity::{Ca, SpiffeId};

/// The subject of the CA this command creates (leaves name it as their issuer).
const CA_NAME: &str = "waypoint test CA";

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Where to write: DIR/ca/{root-cert.pem,ca-key.pem} (reused when present, so later runs
    /// add identities under the same root) and DIR/<namespace>/<service-account>/
    /// {cert-chain.pem,key.pem,root-cert.pem} per identity.
    #[arg(long, default_value = "certs")]
    pub out: PathBuf,
    /// Trust domain of identities given as NAMESPACE/SERVICE_ACCOUNT.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Identities to issue: NAMESPACE/SERVICE_ACCOUNT or spiffe://TD/ns/NS/sa/SA. Default: the
    /// waypoint (default/waypoint) and a client (default/productpage).
    #[arg(value_name = "IDENTITY")]
    pub identities: Vec<String>,
}

/// Where one identity's files went.
#[derive(Debug)]
pub struct Issued {
    pub id: SpiffeId,
    pub dir: PathBuf,
}

fn parse_identity(s: &str, trust_domain: &str) -> anyhow::Result<SpiffeId> {
    if s.starts_with("spiffe://") {
        return Ok(s.parse()?);
    }
    match s.split_once('/') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
            Ok(SpiffeId::new(trust_domain, ns, sa))
        }
        _ => anyhow::bail!(
            "identity {s:?} is neither NAMESPACE/SERVICE_ACCOUNT nor spiffe://TD/ns/NS/sa/SA"
        ),
    }
}

/// The CA under `dir`, or a new one written there. Returns it and whether it was reused.
fn ca_in(dir: &Path) -> anyhow::Result<(Ca, bool)> {
    let (cert, key) = (dir.join("root-cert.pem"), dir.join("ca-key.pem"));
    if cert.exists() || key.exists() {
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let ca = Ca::from_pem(CA_NAME, &read(&cert)?, &read(&key)?)
            .with_context(|| format!("the CA in {}", dir.display()))?;
        return Ok((ca, true));
    }
    let ca = Ca::new(CA_NAME)?;
    ca.write_to(dir)
        .with_context(|| format!("writing the CA to {}", dir.display()))?;
    private(&key)?;
    Ok((ca, false))
}

/// Private keys are readable by their owner only.
fn private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))
}

/// Issue every identity of `args` under the CA in `args.out/ca`.
pub fn issue(args: &CertsArgs) -> anyhow::Result<(bool, Vec<Issued>)> {
    let wanted: Vec<String> = if args.identities.is_empty() {
        vec!["default/waypoint".into(), "default/productpage".into()]
    } else {
        args.identities.clone()
    };
    let ids = wanted
        .iter()
        .map(|s| parse_identity(s, &args.trust_domain))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (ca, reused) = ca_in(&args.out.join("ca"))?;
    let mut issued = Vec::new();
    for id in ids {
        let dir = args.out.join(&id.namespace).join(&id.service_account);
        ca.issue(&id)?
            .write_to(&dir)
            .with_context(|| format!("writing {}", dir.display()))?;
        private(&dir.join("key.pem"))?;
        issued.push(Issued { id, dir });
    }
    Ok((reused, issued))
}

pub fn run(args: &CertsArgs) -> anyhow::Result<()> {
    let (reused, issued) = issue(args)?;
    let ca = args.out.join("ca");
    crate::outln!(
        "{} CA in {} (root-cert.pem, ca-key.pem)",
        if reused { "reused the" } else { "created a" },
        ca.display()
    );
    for Issued { id, dir } in &issued {
        crate::outln!(
            "{id}: {}/{{cert-chain.pem,key.pem,root-cert.pem}}",
            dir.display()
        );
    }
    if let Some(first) = issued.first() {
        let d = first.dir.display();
        crate::outln!(
            "\nrun a waypoint as {}:\n  waypoint run --config DIR --cert-chain {d}/cert-chain.pem \\\n    --key {d}/key.pem --trust-bundle {d}/root-cert.pem",
            first.id
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        assert_eq!(
            parse_identity("default/waypoint", "td").unwrap(),
            SpiffeId::new("td", "default", "waypoint")
        );
        assert_eq!(
            parse_identity("spiffe://x/ns/a/sa/b", "td").unwrap(),
            SpiffeId::new("x", "a", "b")
        );
        for bad in ["waypoint", "a/b/c", "/b", "spiffe://x/y"] {
            assert!(parse_identity(bad, "td").is_err(), "{bad}");
        }
    }
}

//! SSRF guard at connect time: the webhook client's resolver, which drops addresses the rules
//! in [`crate::ssrf`] refuse, so a name cannot resolve its way past them.
//!
//! In: a host name to connect to. Out: the allowed addresses it resolves to, or why none is.
//! Never: lets a name that resolves to a refused address through.

use std::net::SocketAddr;

use crate::config::DeliveryConfig;
use crate::ssrf::{allowed, host_allowed};

/// The host of `delivery.egress_proxy`, when one is set.
fn egress_host(cfg: &DeliveryConfig) -> Option<String> {
    reqwest::Url::parse(cfg.egress_proxy.as_deref()?)
        .ok()?
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// A resolver for reqwest that drops refused addresses, so names cannot sneak past the guard.
#[derive(Clone)]
pub struct GuardedResolver {
    cfg: std::sync::Arc<DeliveryConfig>,
    /// The egress proxy's host, read once (not at every resolution).
    egress: Option<String>,
}

impl GuardedResolver {
    pub fn new(cfg: std::sync::Arc<DeliveryConfig>) -> Self {
        Self {
            egress: egress_host(&cfg),
            cfg,
        }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let cfg = self.cfg.clone();
        let egress = self.egress.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let allow = cfg.allow();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            // A host the operator allowed by name (or the egress proxy) may resolve anywhere.
            if host_allowed(&host, &allow) || egress.is_some_and(|h| h == host) {
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            }
            let ok: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| allowed(a.ip(), &allow).is_ok())
                .collect();
            if ok.is_empty() {
                let why = addrs
                    .first()
                    .map(|a| match allowed(a.ip(), &allow) {
                        Err(e) => e.to_string(),
                        Ok(()) => String::new(),
                    })
                    .unwrap_or_else(|| format!("{host} has no address"));
                return Err(why.into());
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolver_refuses_names_that_resolve_inward() {
        use reqwest::dns::Resolve;
        let r = GuardedResolver::new(std::sync::Arc::new(DeliveryConfig::default()));
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = r.resolve(name).await.err().expect("refused");
        assert!(err.to_string().contains("loopback"), "{err}");
        let r = GuardedResolver::new(std::sync::Arc::new(DeliveryConfig {
            allow_loopback: true,
            ..Default::default()
        }));
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(r.resolve(name).await.is_ok());
    }
}

//! Which destinations a webhook may reach: the SSRF rules on URLs and addresses, pure.
//!
//! In: a URL or an address, and what the operator allows ([`Allow`]). Out: allowed, or why not.
//! Never: resolves a name or reads the config itself (config and delivery both use it).

use std::net::IpAddr;

/// What the operator allows beyond public addresses (`delivery.allow_*`, `require_https`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Allow<'a> {
    pub loopback: bool,
    pub private: bool,
    pub cidrs: &'a [ipnet::IpNet],
    pub hosts: &'a [String],
    pub require_https: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    #[error("not a valid http(s) URL: {0}")]
    BadUrl(String),
    #[error("destination {0} is a {1} address; allow it with delivery.allow_{2}")]
    Refused(IpAddr, &'static str, &'static str),
}

/// Why an address is refused: (kind, config switch), or `None` when it is public.
pub fn classify(ip: IpAddr) -> Option<(&'static str, &'static str)> {
    let ip = match ip {
        // IPv4-mapped (::ffff:a.b.c.d) and the deprecated IPv4-compatible (::a.b.c.d) forms
        // reach the IPv4 address: judge that.
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .or_else(|| {
                let s = v6.segments();
                (s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified())
                    .then(|| v6.to_ipv4())
                    .flatten()
            })
            .map(IpAddr::V4)
            .unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some(("loopback", "loopback"))
            } else if v4.octets()[..2] == [169, 254] {
                Some(("link-local or metadata", "private"))
            } else if v4.is_private()
                || v4.is_unspecified()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
            {
                Some(("private", "private"))
            } else if v4.octets()[0] == 0
                || v4.octets()[..3] == [192, 0, 0]
                || v4.octets()[0] == 198 && (v4.octets()[1] & 0xfe) == 18
                || v4.octets()[0] >= 240
            {
                // "This network", IETF protocol assignments, benchmarking, reserved (and
                // broadcast): nothing a webhook should reach.
                Some(("reserved", "private"))
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Some(("loopback", "loopback"))
            } else if v6.is_unspecified() || (s[0] & 0xfe00) == 0xfc00 {
                Some(("private", "private"))
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some(("link-local or metadata", "private"))
            } else if (s[0] & 0xffc0) == 0xfec0 {
                // Site-local (deprecated, still routed inward on some networks).
                Some(("private", "private"))
            } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                // NAT64: reaches whatever IPv4 address it embeds.
                Some(("NAT64", "private"))
            } else {
                None
            }
        }
    }
}

/// True when config allows connecting to `ip`.
pub fn allowed(ip: IpAddr, allow: &Allow<'_>) -> Result<(), GuardError> {
    if allow.cidrs.iter().any(|n| n.contains(&ip)) {
        return Ok(());
    }
    match classify(ip) {
        None => Ok(()),
        Some((_, "loopback")) if allow.loopback => Ok(()),
        Some((_, "private")) if allow.private => Ok(()),
        Some((kind, switch)) => Err(GuardError::Refused(ip, kind, switch)),
    }
}

/// Checks a webhook URL: http or https, a host, and (for literal IPs) an allowed address.
pub fn check_url(url: &str, allow: &Allow<'_>) -> Result<reqwest::Url, GuardError> {
    let u = reqwest::Url::parse(url).map_err(|e| GuardError::BadUrl(e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(GuardError::BadUrl(format!("scheme `{}`", u.scheme())));
    }
    if allow.require_https && u.scheme() != "https" {
        return Err(GuardError::BadUrl(
            "https is required (delivery.require_https)".into(),
        ));
    }
    if u.host_str().is_some_and(|h| host_allowed(h, allow)) {
        return Ok(u);
    }
    match u.host() {
        None => return Err(GuardError::BadUrl("no host".into())),
        Some(url::Host::Ipv4(ip)) => allowed(IpAddr::V4(ip), allow)?,
        Some(url::Host::Ipv6(ip)) => allowed(IpAddr::V6(ip), allow)?,
        Some(url::Host::Domain(d)) => {
            if d.eq_ignore_ascii_case("localhost") && !allow.loopback {
                return Err(GuardError::Refused(
                    IpAddr::from([127, 0, 0, 1]),
                    "loopback",
                    "loopback",
                ));
            }
        }
    }
    Ok(u)
}

/// True when `host` is listed in `delivery.allow_hosts`.
pub fn host_allowed(host: &str, allow: &Allow<'_>) -> bool {
    allow.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeliveryConfig;

    #[test]
    fn refuses_internal_destinations_by_default() {
        let cfg = DeliveryConfig::default();
        for u in [
            "http://127.0.0.1:9/x",
            "http://localhost/x",
            "http://10.0.0.1/",
            "http://192.168.1.1/",
            "http://172.16.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
        ] {
            assert!(check_url(u, &cfg.allow()).is_err(), "{u} should be refused");
        }
        assert!(check_url("https://hooks.example.com/x", &cfg.allow()).is_ok());
        assert!(check_url("http://8.8.8.8/", &cfg.allow()).is_ok());
        assert!(check_url("ftp://example.com/", &cfg.allow()).is_err());
        assert!(check_url("not a url", &cfg.allow()).is_err());
    }

    #[test]
    fn reserved_and_translated_ranges_are_refused() {
        for ip in [
            "0.1.2.3",
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.254",
            "240.0.0.1",
            "255.255.255.255",
            "64:ff9b::a9fe:a9fe",
            "fec0::1",
            "::7f00:1",
            "::a9fe:a9fe",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(classify(ip).is_some(), "{ip} must be refused");
        }
        // Neighbours that are public stay allowed.
        for ip in [
            "198.20.0.1",
            "192.0.1.1",
            "1.1.1.1",
            "2001:db8::1",
            "64:ff9c::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(classify(ip).is_none(), "{ip} is public");
        }
    }

    #[test]
    fn switches_allow_what_they_name() {
        let cfg = DeliveryConfig {
            allow_loopback: true,
            ..Default::default()
        };
        assert!(check_url("http://127.0.0.1:9/x", &cfg.allow()).is_ok());
        assert!(check_url("http://localhost:9/x", &cfg.allow()).is_ok());
        assert!(check_url("http://10.0.0.1/", &cfg.allow()).is_err());
        let cfg = DeliveryConfig {
            allow_private: true,
            ..Default::default()
        };
        assert!(check_url("http://10.0.0.1/", &cfg.allow()).is_ok());
        assert!(check_url("http://127.0.0.1/", &cfg.allow()).is_err());
        let cfg = DeliveryConfig {
            allow_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
            allow_hosts: vec!["hooks.internal".into()],
            ..Default::default()
        };
        assert!(check_url("http://10.1.2.3/", &cfg.allow()).is_ok());
        assert!(check_url("http://10.2.0.1/", &cfg.allow()).is_err());
        assert!(check_url("http://hooks.internal/x", &cfg.allow()).is_ok());
        let cfg = DeliveryConfig {
            require_https: true,
            ..Default::default()
        };
        assert!(check_url("http://hooks.example.com/", &cfg.allow()).is_err());
        assert!(check_url("https://hooks.example.com/", &cfg.allow()).is_ok());
    }
}

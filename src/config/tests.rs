use std::time::Duration;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_str(toml: &str, e: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, toml).unwrap();
    Config::load(Some(&p), &env(e), &Overrides::default())
}

#[test]
fn shipped_file_equals_built_in_defaults() {
    let from_file: Config = toml_like(DEFAULT_TOML);
    let def = Config::default();
    assert_eq!(format!("{from_file:?}"), format!("{def:?}"));
    let loaded = Config::load(None, &[], &Overrides::default()).unwrap();
    assert_eq!(format!("{loaded:?}"), format!("{def:?}"));
}

fn toml_like(s: &str) -> Config {
    figment::Figment::from(Toml::string(s)).extract().unwrap()
}

#[test]
fn unknown_key_names_the_key() {
    let e = load_str("[proxy]\nlisten = \"127.0.0.1:1\"\nupstreem = \"x\"\n", &[]).unwrap_err();
    let m = e.to_string();
    assert!(m.contains("upstreem"), "{m}");
}

#[test]
fn bad_values_name_the_key() {
    for (toml, key) in [
        ("[proxy]\nupstream = \"ftp://x\"\n", "proxy.upstream"),
        ("[runtime]\nproxy_threads = 257\n", "runtime.proxy_threads"),
        (
            &format!("[proxy]\nupstream_socket = \"/{}\"\n", "s".repeat(107)),
            "proxy.upstream_socket",
        ),
        ("[proxy]\nupstream = \"http://x:1/path\"\n", "proxy.upstream"),
        ("[proxy]\nlisten = \"nope\"\n", "listen"),
        ("[proxy]\nupstream_timeout = \"forever\"\n", "upstream_timeout"),
        ("[proxy]\npath_prefix = \"flagr\"\n", "proxy.path_prefix"),
        ("[proxy]\npath_prefix = \"/a//b\"\n", "proxy.path_prefix"),
        ("[proxy]\npath_prefix = \"/a/../b\"\n", "proxy.path_prefix"),
        ("[proxy]\npath_prefix = \"/fl%61gr\"\n", "proxy.path_prefix"),
        ("[proxy]\nheader_read_timeout = \"0s\"\n", "proxy.header_read_timeout"),
        ("[delivery]\njitter = 2.0\n", "delivery.jitter"),
        ("[delivery]\nretry_schedule = []\n", "delivery.retry_schedule"),
        ("[log]\nformat = \"xml\"\n", "log.format"),
        ("[[webhooks]]\nid = \"a\"\nurl = \"http://127.0.0.1:1/\"\n", "webhooks[0].url"),
        ("[delivery]\nallow_loopback = true\n[[webhooks]]\nid = \"a\"\nurl = \"http://127.0.0.1:1/\"\nevents = [\"flag.nope\"]\n", "webhooks[0].events"),
        ("[delivery]\nallow_loopback = true\n[[webhooks]]\nid = \"a b\"\nurl = \"http://127.0.0.1:1/\"\n", "webhooks[0].id"),
        ("[delivery]\nallow_loopback = true\n[[webhooks]]\nid = \"a\"\nurl = \"http://127.0.0.1:1/\"\nsecret = \"env:NOPE_NOT_SET\"\n", "webhooks[0].secret"),
    ] {
        let m = load_str(toml, &[]).unwrap_err().to_string();
        assert!(m.contains(key), "{toml:?}: {m}");
    }
}

#[test]
fn env_overrides_file_and_flags_override_env() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[proxy]\nupstream = \"http://127.0.0.1:1\"\n").unwrap();
    let e = env(&[
        ("FLAGHOOK_PROXY__UPSTREAM", "http://127.0.0.1:2"),
        ("FLAGHOOK_DELIVERY__ALLOW_LOOPBACK", "true"),
        ("FLAGHOOK_DELIVERY__QUEUE_MAX_EVENTS", "7"),
        ("FLAGHOOK_PROXY__UPSTREAM_TIMEOUT", "3s"),
    ]);
    let c = Config::load(Some(&p), &e, &Overrides::default()).unwrap();
    assert_eq!(c.proxy.upstream, "http://127.0.0.1:2");
    assert!(c.delivery.allow_loopback);
    assert_eq!(c.delivery.queue_max_events, 7);
    assert_eq!(c.proxy.upstream_timeout, Duration::from_secs(3));
    let o = Overrides {
        skip_secrets: false,
        upstream: Some("http://127.0.0.1:3".into()),
        listen: Some("127.0.0.1:9".parse().unwrap()),
        admin_listen: None,
    };
    let c = Config::load(Some(&p), &e, &o).unwrap();
    assert_eq!(c.proxy.upstream, "http://127.0.0.1:3");
    assert_eq!(c.proxy.listen.port(), 9);
}

#[test]
fn secrets_resolve_from_env_and_file_and_never_print() {
    let dir = tempfile::tempdir().unwrap();
    let sf = dir.path().join("s");
    std::fs::write(&sf, "from-file\n").unwrap();
    let toml = format!(
        "[admin]\ntoken = \"env:TOK\"\n[delivery]\nallow_loopback = true\n[[webhooks]]\nid = \"a\"\nurl = \"http://127.0.0.1:1/\"\nsecret = \"file:{}\"\nprevious_secret = \"literal-old\"\n",
        sf.display()
    );
    let c = load_str(&toml, &[("TOK", "tok-value")]).unwrap();
    assert_eq!(c.admin.token.expose(), Some("tok-value"));
    assert_eq!(c.webhooks[0].secret.expose(), Some("from-file"));
    let dbg = format!("{c:?}");
    for s in ["tok-value", "from-file", "literal-old"] {
        assert!(!dbg.contains(s), "{s} leaked into Debug");
    }
}

#[test]
fn cluster_mode_checks_its_url_tls_store_and_bounds() {
    let store = "[store]\npath = \"/tmp/flaghook-cfg-test.redb\"\n";
    let ok = load_str(
        &format!("{store}[cluster]\nredis_url = \"env:R\"\npassword = \"file:/nonexistent\"\n"),
        &[("R", "redis://10.0.0.1:6379/0")],
    );
    // The password file is read at load: a missing one names its key.
    let m = ok.unwrap_err().to_string();
    assert!(m.contains("cluster.password"), "{m}");
    let c = load_str(
        &format!("{store}[cluster]\nredis_url = \"env:R\"\n"),
        &[("R", "rediss://user:pw@redis.example:6380/1")],
    )
    .unwrap();
    assert!(c.cluster.enabled());
    assert!(!format!("{c:?}").contains("pw@"), "the URL is a secret");
    let cases = [
        ("redis_url = \"http://redis:6379\"\n", "cluster.redis_url"),
        (
            "redis_url = \"redis://r:6379\"\ntls_ca_file = \"/etc/ca.pem\"\n",
            "cluster.tls_ca_file",
        ),
        (
            "redis_url = \"rediss://r:6379\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n",
            "cluster.tls_ca_file",
        ),
        (
            "redis_url = \"redis://r\"\nkey_prefix = \"a b\"\n",
            "cluster.key_prefix",
        ),
        (
            "redis_url = \"redis://r\"\nlease_ttl = \"100ms\"\n",
            "cluster.lease_ttl",
        ),
        (
            "redis_url = \"redis://r\"\nlease_ttl = \"10s\"\nreclaim_idle = \"5s\"\n",
            "cluster.reclaim_idle",
        ),
        (
            "redis_url = \"redis://r\"\nhand_max_events = 0\n",
            "cluster.hand_max_events",
        ),
    ];
    for (section, key) in cases {
        let m = load_str(&format!("{store}[cluster]\n{section}"), &[])
            .unwrap_err()
            .to_string();
        assert!(m.contains(key), "{section}: {m}");
    }
    // Events wait in the store while Redis is away: an in-memory store is refused.
    let m = load_str(
        "[store]\npath = \"\"\n[cluster]\nredis_url = \"redis://r\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(m.contains("store.path"), "{m}");
    // Off by default.
    assert!(!load_str("", &[]).unwrap().cluster.enabled());
}

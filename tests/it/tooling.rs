//! The Helm chart, checked with the real tools: `helm lint`, `helm template`, the Kubernetes
//! schemas (kubernetes-validate), and `flaghook check-config` on the config the chart renders.

use std::path::PathBuf;
use std::process::Command;

pub fn tool(name: &str, cached: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(cached);
    if p.exists() {
        return p;
    }
    which(name).unwrap_or_else(|| panic!("{name} is missing: run scripts/install-test-deps"))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    })
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The value of `flaghook.json: |` in the rendered ConfigMap (a YAML block scalar).
pub fn rendered_config(manifests: &str) -> String {
    let mut lines = manifests
        .lines()
        .skip_while(|l| l.trim() != "flaghook.json: |");
    lines.next().expect("the ConfigMap holds flaghook.json");
    let body: Vec<&str> = lines
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .collect();
    body.iter()
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn helm_chart_lints_renders_validates_and_configures_flaghook() {
    let helm = tool("helm", ".cache/bin/helm");
    let validate = tool("kubernetes-validate", ".cache/venv/bin/kubernetes-validate");
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/flaghook");
    let dir = tempfile::tempdir().unwrap();
    let mut cases = std::fs::read_dir(chart.join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect::<Vec<_>>();
    cases.sort();
    assert!(cases.len() >= 3);
    for values in cases {
        let name = values.file_stem().unwrap().to_string_lossy().to_string();
        run(Command::new(&helm)
            .arg("lint")
            .arg(&chart)
            .arg("--strict")
            .arg("-f")
            .arg(&values));
        let manifests = run(Command::new(&helm)
            .args(["template", "release"])
            .arg(&chart)
            .arg("-f")
            .arg(&values));
        let out = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&out, &manifests).unwrap();
        let report = run(Command::new(&validate).arg("--strict").arg(&out));
        assert!(!report.contains("ERROR"), "{name}: {report}");
        // Custom resources (ServiceMonitor) have no schema there; everything else must pass.
        for line in report
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
        {
            assert!(line.contains("ServiceMonitor"), "{name}: {line}");
        }
        let cfg = dir.path().join(format!("{name}.json"));
        std::fs::write(&cfg, rendered_config(&manifests)).unwrap();
        let ok = run(Command::new(env!("CARGO_BIN_EXE_flaghook"))
            .args(["check-config", "--skip-secrets"])
            .arg(&cfg));
        assert!(ok.contains("config ok"), "{name}: {ok}");
        if name == "full-webhooks" {
            assert!(ok.contains("2 webhook(s)"), "{ok}");
            for needle in [
                "readOnlyRootFilesystem: true",
                "runAsNonRoot: true",
                "checksum/config:",
                "prometheus.io/scrape",
                "kind: PodDisruptionBudget",
                "kind: ServiceMonitor",
                "value: \"127.0.0.1\"",
            ] {
                assert!(manifests.contains(needle), "missing {needle}");
            }
            assert!(!manifests.contains("s3cret\n") || manifests.contains("kind: Secret"));
        }
        if name.starts_with("sidecar") {
            assert!(
                !manifests.contains("kind: Deployment"),
                "sidecar mode renders no Deployment"
            );
        }
    }
    // A value the schema forbids is refused before anything renders.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "mode: everything\n").unwrap();
    let out = Command::new(&helm)
        .arg("template")
        .arg("x")
        .arg(&chart)
        .arg("-f")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mode"));
    // Several replicas on one Flagr database must not each send every change.
    let replicas = |extra: &[&str]| {
        Command::new(&helm)
            .args(["template", "x"])
            .arg(&chart)
            .args(["--set", "replicaCount=2"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = replicas(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("changelog.follow=proxied"));
    let out = replicas(&["--set", "config.changelog.follow=proxied"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("replicas: 2"));
    assert!(text.contains("/var/lib/flaghook/flaghook.redb"));
}

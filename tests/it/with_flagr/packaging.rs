//! The chart as a pod runs it: grace period, update strategy and volumes from `helm template`,
//! and the binary started with the chart's rendered config under a read-only root filesystem
//! with only the chart's volumes writable (a private mount namespace, as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;
use crate::tooling::{rendered_config, run, tool};

fn helm_template(values: &Path, set: &[&str]) -> String {
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/flaghook");
    let mut cmd = Command::new(tool("helm", ".cache/bin/helm"));
    cmd.args(["template", "release"])
        .arg(&chart)
        .arg("-f")
        .arg(values);
    for s in set {
        cmd.args(["--set", s]);
    }
    run(&mut cmd)
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn grace_period_strategy_and_volumes_follow_the_values() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("v.yaml");
    std::fs::write(&values, "mode: full\n").unwrap();
    let m = helm_template(&values, &[]);
    // 20 s drain + 20 s delivery + 10 s: Kubernetes' own 30 s would cut the drain short.
    assert!(m.contains("terminationGracePeriodSeconds: 50"), "{m}");
    assert!(!m.contains("Recreate"));
    assert!(m.contains("mountPath: /var/cache/flaghook"));
    assert!(rendered_config(&m).contains("\"workdir\": \"/var/cache/flaghook/git\""));
    let m = helm_template(
        &values,
        &[
            "persistence.enabled=true",
            "config.proxy.shutdown_grace=1m",
            "config.delivery.shutdown_deadline=90s",
        ],
    );
    assert!(m.contains("terminationGracePeriodSeconds: 160"), "{m}");
    assert!(m.contains("type: Recreate"), "{m}");
    assert!(m.contains("kind: PersistentVolumeClaim"));
    let m = helm_template(&values, &["terminationGracePeriodSeconds=300"]);
    assert!(m.contains("terminationGracePeriodSeconds: 300"));
    // Fractions round up; extra environment (Flagr's notifier variables) reaches the container.
    let m = helm_template(
        &values,
        &[
            "config.proxy.shutdown_grace=1.5s",
            "env.FLAGR_NOTIFICATION_WEBHOOK_ENABLED=true",
        ],
    );
    assert!(m.contains("terminationGracePeriodSeconds: 32"), "{m}");
    assert!(
        m.contains("- name: FLAGR_NOTIFICATION_WEBHOOK_ENABLED\n              value: \"true\""),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_config_runs_under_a_read_only_root() {
    let f = flagr(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    // A repository with one flag, read by git sync from the read-only root.
    sh(
        dir.path(),
        "git init --quiet --bare -b main flags.git && git init --quiet -b main work && \
         mkdir -p work/flags && \
         printf '{\"Flags\": [{\"Key\": \"ro-root\", \"Description\": \"d\", \"Enabled\": true}]}' \
           > work/flags/f.json && \
         git -C work add -A && git -C work commit --quiet -m flags && \
         git -C work push --quiet ../flags.git main",
    );
    let values = dir.path().join("v.yaml");
    std::fs::write(
        &values,
        format!(
            "mode: full\nconfig:\n  admin:\n    token: t\n  git_repositories:\n    - id: flags\n      url: file://{}/flags.git\n      folder: flags\n      poll_interval: 1h\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let m = helm_template(&values, &[]);
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("flaghook.json"), rendered_config(&m)).unwrap();
    // Mount points for the chart's volumes (the same paths as in the pod).
    for p in ["/var/lib/flaghook", "/var/cache/flaghook", "/etc/flaghook"] {
        assert!(
            m.contains(&format!("mountPath: {p}")),
            "the chart mounts {p}"
        );
        std::fs::create_dir_all(p).unwrap();
    }
    let (pp, ap) = (free_port(), free_port());
    let script = format!(
        "mount -o remount,bind,ro / && \
         mount -t tmpfs -o size=64m data /var/lib/flaghook && \
         mount -t tmpfs -o size=64m cache /var/cache/flaghook && \
         mount --bind -o ro {etc} /etc/flaghook && \
         exec {bin} --config /etc/flaghook/flaghook.json",
        etc = etc.display(),
        bin = env!("CARGO_BIN_EXE_flaghook"),
    );
    let log = dir.path().join("flaghook.log");
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(&script)
        // The pod's addresses are the chart's; here they are free loopback ports and Flagr's.
        .env("FLAGHOOK_PROXY__LISTEN", format!("127.0.0.1:{pp}"))
        .env("FLAGHOOK_ADMIN__LISTEN", format!("127.0.0.1:{ap}"))
        .env("FLAGHOOK_PROXY__UPSTREAM", f.url())
        .env("HOME", "/var/cache/flaghook")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("unshare runs");
    let admin = format!("http://127.0.0.1:{ap}");
    let up = wait_until(Duration::from_secs(30), || async {
        client()
            .get(format!("{admin}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    if !up {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "flaghook did not start under a read-only root:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let synced = wait_until(Duration::from_secs(30), || async {
        let (_, v) = call_auth("GET", &format!("{admin}/api/gitsync"), "t").await;
        !v["repositories"][0]["last_synced_commit"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    })
    .await;
    let (_, ready) = call("GET", &format!("{admin}/readyz"), None).await;
    let (_, status) = call_auth("GET", &format!("{admin}/api/gitsync"), "t").await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exited = child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        synced,
        "git sync failed under a read-only root: {status}\n{log}"
    );
    assert_eq!(ready["status"], "ready", "{ready}\n{log}");
    assert_eq!(ready["store"], "ok", "{ready}\n{log}");
    assert!(!log.contains("memory only"), "{log}");
    assert!(exited.success(), "{exited:?}\n{log}");
    let flags = call("GET", &format!("{}/flags", f.api()), None).await.1;
    assert!(
        flags
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["key"] == "ro-root"),
        "{flags}"
    );
}

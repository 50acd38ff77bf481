//! Push webhooks from forges: GitHub, GitLab, Gitea, Forgejo and a generic form. Parsing and
//! signature checks only.
//!
//! In: the forge name, request headers and the raw body. Out: a [`Push`] (repository URLs,
//! branch, before, after, delivery id) or why it was refused.
//! Never: compares a secret or signature in anything but constant time.

use http::HeaderMap;
use serde_json::Value;
use subtle::ConstantTimeEq;

/// Which forge sent it (the path segment of `/hooks/git/{forge}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    GitLab,
    Gitea,
    Forgejo,
    Generic,
}

impl Forge {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "github" => Forge::GitHub,
            "gitlab" => Forge::GitLab,
            "gitea" => Forge::Gitea,
            "forgejo" => Forge::Forgejo,
            "generic" => Forge::Generic,
            _ => return None,
        })
    }

    /// The key of `git_repositories[].secrets` for this forge.
    pub fn secret_key(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::GitLab => "gitlab",
            Forge::Gitea | Forge::Forgejo => "gitea",
            Forge::Generic => "generic",
        }
    }
}

/// A push, as far as sync cares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Push {
    /// Every URL the payload gives for the repository (clone, ssh, web).
    pub repo_urls: Vec<String>,
    /// The branch name (from `refs/heads/<branch>`); empty for tags and others.
    pub branch: String,
    pub before: String,
    pub after: String,
    /// The forge's delivery id, for de-duplication.
    pub delivery: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("malformed push: {0}")]
    Malformed(String),
    #[error("signature missing or wrong")]
    Unauthorized,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Parses a push body. Event kinds other than push are malformed for this endpoint.
pub fn parse(forge: Forge, headers: &HeaderMap, body: &[u8]) -> Result<Push, PushError> {
    let event = match forge {
        Forge::GitHub => header(headers, "x-github-event"),
        Forge::GitLab => header(headers, "x-gitlab-event"),
        Forge::Gitea => header(headers, "x-gitea-event"),
        Forge::Forgejo => header(headers, "x-forgejo-event"),
        Forge::Generic => "push",
    };
    let is_push = match forge {
        Forge::GitLab => event == "Push Hook",
        _ => event == "push",
    };
    if !is_push {
        return Err(PushError::Malformed(format!(
            "not a push event (`{event}`)"
        )));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| PushError::Malformed(format!("body is not JSON: {e}")))?;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let r#ref = s(&v, "ref");
    let before = s(&v, "before");
    let after = s(&v, "after");
    if r#ref.is_empty() || after.is_empty() {
        return Err(PushError::Malformed(
            "`ref` and `after` are required".into(),
        ));
    }
    let mut repo_urls = Vec::new();
    let repo = v.get("repository").or_else(|| v.get("project"));
    if let Some(Value::String(u)) = repo {
        repo_urls.push(u.clone());
    } else if let Some(r) = repo {
        for k in [
            "clone_url",
            "git_url",
            "ssh_url",
            "html_url",
            "url",
            "git_http_url",
            "git_ssh_url",
            "web_url",
            "homepage",
        ] {
            let u = s(r, k);
            if !u.is_empty() {
                repo_urls.push(u);
            }
        }
    }
    if repo_urls.is_empty() {
        return Err(PushError::Malformed("no repository in the payload".into()));
    }
    let delivery = [
        "x-github-delivery",
        "x-gitlab-event-uuid",
        "x-gitea-delivery",
        "x-forgejo-delivery",
        "x-flaghook-delivery",
    ]
    .iter()
    .map(|h| header(headers, h))
    .find(|d| !d.is_empty())
    .unwrap_or("")
    .to_string();
    Ok(Push {
        repo_urls,
        branch: r#ref.strip_prefix("refs/heads/").unwrap_or("").to_string(),
        before,
        after,
        delivery,
    })
}

fn hmac_ok(secret: &str, body: &[u8], hex_sig: &str) -> bool {
    crate::delivery::sign::verify_hex(secret.as_bytes(), body, hex_sig)
}

/// Checks the forge's signature (or token) with the repository's secret for that forge.
pub fn verify(
    forge: Forge,
    secret: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), PushError> {
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        // No secret configured for this forge: its pushes are not accepted.
        return Err(PushError::Unauthorized);
    };
    let ok = match forge {
        Forge::GitHub => header(headers, "x-hub-signature-256")
            .strip_prefix("sha256=")
            .is_some_and(|s| hmac_ok(secret, body, s)),
        Forge::GitLab => bool::from(
            header(headers, "x-gitlab-token")
                .as_bytes()
                .ct_eq(secret.as_bytes()),
        ),
        Forge::Gitea | Forge::Forgejo => {
            let sig = match header(headers, "x-forgejo-signature") {
                "" => header(headers, "x-gitea-signature"),
                s => s,
            };
            hmac_ok(secret, body, sig)
        }
        Forge::Generic => header(headers, "x-flaghook-signature")
            .strip_prefix("sha256=")
            .is_some_and(|s| hmac_ok(secret, body, s)),
    };
    if ok {
        Ok(())
    } else {
        Err(PushError::Unauthorized)
    }
}

/// URLs compared without noise: no credentials, lowercase, no trailing `/` or `.git`.
pub fn same_repo(a: &str, b: &str) -> bool {
    let n = |u: &str| {
        let bare = url::Url::parse(u.trim())
            .map(|mut p| {
                let _ = p.set_username("");
                let _ = p.set_password(None);
                p.to_string()
            })
            .unwrap_or_else(|_| u.trim().to_string());
        bare.trim_end_matches('/')
            .trim_end_matches(".git")
            .to_ascii_lowercase()
    };
    n(a) == n(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        m.update(body);
        hex::encode(m.finalize().into_bytes())
    }

    const GH: &str = r#"{"ref": "refs/heads/main", "before": "aaa", "after": "bbb",
        "repository": {"clone_url": "https://github.com/o/r.git", "html_url": "https://github.com/o/r"},
        "commits": [{"added": ["flags/a.json"], "modified": [], "removed": ["README.md"]}]}"#;

    #[test]
    fn github_push_parses_and_verifies() {
        let hd = h(&[
            ("x-github-event", "push"),
            ("x-github-delivery", "d-1"),
            (
                "x-hub-signature-256",
                &format!("sha256={}", sign("s", GH.as_bytes())),
            ),
        ]);
        let p = parse(Forge::GitHub, &hd, GH.as_bytes()).unwrap();
        assert_eq!(
            (
                p.branch.as_str(),
                p.before.as_str(),
                p.after.as_str(),
                p.delivery.as_str()
            ),
            ("main", "aaa", "bbb", "d-1")
        );
        assert!(same_repo(&p.repo_urls[0], "https://GitHub.com/o/r/"));
        assert!(same_repo(
            &p.repo_urls[0],
            "https://x:TOKEN@github.com/o/r.git"
        ));
        assert_eq!(verify(Forge::GitHub, Some("s"), &hd, GH.as_bytes()), Ok(()));
        assert_eq!(
            verify(Forge::GitHub, Some("other"), &hd, GH.as_bytes()),
            Err(PushError::Unauthorized)
        );
        assert_eq!(
            verify(Forge::GitHub, None, &hd, GH.as_bytes()),
            Err(PushError::Unauthorized)
        );
        let tampered = GH.replace("bbb", "ccc");
        assert_eq!(
            verify(Forge::GitHub, Some("s"), &hd, tampered.as_bytes()),
            Err(PushError::Unauthorized)
        );
    }

    #[test]
    fn gitlab_gitea_forgejo_and_generic() {
        let gl = r#"{"ref": "refs/heads/main", "before": "a", "after": "b", "total_commits_count": 2,
            "project": {"git_http_url": "https://gitlab.example.com/o/r.git"}, "commits": [{"added": [], "modified": ["x"], "removed": []}]}"#;
        let hd = h(&[("x-gitlab-event", "Push Hook"), ("x-gitlab-token", "tok")]);
        let p = parse(Forge::GitLab, &hd, gl.as_bytes()).unwrap();
        assert_eq!(p.after, "b");
        assert_eq!(
            verify(Forge::GitLab, Some("tok"), &hd, gl.as_bytes()),
            Ok(())
        );
        assert!(verify(Forge::GitLab, Some("tok2"), &hd, gl.as_bytes()).is_err());
        for (forge, ev, sig) in [
            (Forge::Gitea, "x-gitea-event", "x-gitea-signature"),
            (Forge::Forgejo, "x-forgejo-event", "x-forgejo-signature"),
        ] {
            let hd = h(&[(ev, "push"), (sig, &sign("g", GH.as_bytes()))]);
            assert!(parse(forge, &hd, GH.as_bytes()).is_ok());
            assert_eq!(verify(forge, Some("g"), &hd, GH.as_bytes()), Ok(()));
        }
        let generic = r#"{"repository": "file:///srv/flags.git", "ref": "refs/heads/main", "before": "", "after": "c"}"#;
        let hd = h(&[(
            "x-flaghook-signature",
            &format!("sha256={}", sign("x", generic.as_bytes())),
        )]);
        let p = parse(Forge::Generic, &hd, generic.as_bytes()).unwrap();
        assert_eq!(p.repo_urls, ["file:///srv/flags.git"]);
        assert_eq!(
            verify(Forge::Generic, Some("x"), &hd, generic.as_bytes()),
            Ok(())
        );
    }

    #[test]
    fn malformed_pushes() {
        let hd = h(&[("x-github-event", "push")]);
        assert!(matches!(
            parse(Forge::GitHub, &hd, b"{nope"),
            Err(PushError::Malformed(_))
        ));
        assert!(matches!(
            parse(Forge::GitHub, &hd, b"{\"ref\": \"refs/heads/main\"}"),
            Err(PushError::Malformed(_))
        ));
        let ping = h(&[("x-github-event", "ping")]);
        assert!(matches!(
            parse(Forge::GitHub, &ping, GH.as_bytes()),
            Err(PushError::Malformed(_))
        ));
        assert_eq!(Forge::parse("bitbucket"), None);
    }
}

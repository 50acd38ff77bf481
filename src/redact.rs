//! Credentials in URLs, masked wherever a URL or an error that carries one is shown.
//!
//! In: a URL as configured (a git remote, a webhook), and texts to show (git's stderr, HTTP
//! client errors). Out: the URL with its user, password and query values as `***`, and texts
//! with those parts masked wherever they appear.
//! Never: returns a configured credential in any of the forms it was written in.

const MASK: &str = "***";

/// `https://user:TOKEN@host/p?token=x#f` → `https://***:***@host/p?token=***#f`.
pub fn url(u: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(u) else {
        // Not a URL the parser takes (an scp-like `git@host:path` has no secret in it): mask
        // whatever sits between the scheme and an `@`, in case it is a credential.
        return match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s + 3 => format!("{}{MASK}{}", &u[..s + 3], &u[at..]),
            _ => u.to_string(),
        };
    };
    if !parsed.username().is_empty() {
        let _ = parsed.set_username(MASK);
    }
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(MASK));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, bool)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.is_empty()))
            .collect();
        let mut q = parsed.query_pairs_mut();
        q.clear();
        for (k, empty) in pairs {
            q.append_pair(&k, if empty { "" } else { MASK });
        }
    }
    parsed.to_string()
}

/// Masks one URL's credentials in any text: the URL itself, then each credential alone (raw
/// and percent-decoded), so an error that quotes them differently is covered too.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(u: &str) -> Self {
        let mut secrets = vec![u.to_string()];
        if let Ok(parsed) = url::Url::parse(u) {
            secrets.push(parsed.username().to_string());
            secrets.extend(parsed.password().map(str::to_string));
            secrets.extend(parsed.query_pairs().map(|(_, v)| v.into_owned()));
            for raw in parsed.query().unwrap_or("").split('&') {
                secrets.extend(raw.split_once('=').map(|(_, v)| v.to_string()));
            }
            let decoded: Vec<String> = secrets
                .iter()
                .filter_map(|s| {
                    url::form_urlencoded::parse(format!("x={s}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                })
                .collect();
            secrets.extend(decoded);
        }
        // Very short values (`?v=1`) are no secret, and masking them would garble the text.
        secrets.retain(|s| s.len() >= 3 && s != MASK);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    pub fn text(&self, t: &str) -> String {
        let mut out = t.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), MASK);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_users_passwords_and_query_values() {
        assert_eq!(
            url("https://user:TOKEN@git.example.com/flags.git"),
            "https://***:***@git.example.com/flags.git"
        );
        assert_eq!(
            url("https://ghp_abc@github.com/o/r"),
            "https://***@github.com/o/r"
        );
        assert_eq!(
            url("https://h.example.com/hook?token=s3cr3t&empty=&x=1"),
            "https://h.example.com/hook?token=***&empty=&x=***"
        );
        assert_eq!(url("http://h/p"), "http://h/p");
        assert_eq!(url("git@github.com:o/r.git"), "git@github.com:o/r.git");
        assert_eq!(url("https://u:p w@bad host/"), "https://***@bad host/");
    }

    #[test]
    fn texts_lose_the_url_and_each_credential() {
        let r = Redactor::new("https://user:p%40ss-word@git.example.com/flags.git?k=tok3n");
        let git = "fatal: unable to access 'https://user:p%40ss-word@git.example.com/flags.git?k=tok3n/': \
                   auth failed for user p@ss-word, token tok3n";
        let shown = r.text(git);
        for secret in ["p%40ss-word", "p@ss-word", "tok3n", "user:"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("git.example.com") || shown.contains("***"),
            "{shown}"
        );
        // Short values stay: masking `1` would garble every number.
        assert_eq!(Redactor::new("http://h/p?v=1").text("HTTP 501"), "HTTP 501");
    }
}

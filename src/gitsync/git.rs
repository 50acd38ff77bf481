//! Git through the `git` command line: a bare cache per repository, fetch, read files.
//!
//! In: a repository URL (local path, `file://`, `git://`, `http(s)://`), a branch, a folder.
//! Out: commit ids and file contents. Never: writes to the remote, or runs a hook or a
//! command from the repository (bare cache, no checkout).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// One commit as the admin API shows it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CommitInfo {
    pub id: String,
    pub short: String,
    /// The subject line.
    pub message: String,
    pub author: String,
    /// RFC 3339, UTC.
    pub time: String,
}

#[derive(Debug, thiserror::Error)]
#[error("git {args}: {message}")]
pub struct GitError {
    args: String,
    message: String,
}

/// A bare local cache of one remote branch.
#[derive(Clone, Debug)]
pub struct Repo {
    pub url: String,
    pub branch: String,
    dir: PathBuf,
    timeout: Duration,
    /// git quotes the remote URL in its errors; a password in it must not reach logs or status.
    redactor: crate::redact::Redactor,
}

impl Repo {
    pub fn new(url: &str, branch: &str, dir: &Path, timeout: Duration) -> Self {
        Self {
            url: url.to_string(),
            branch: branch.to_string(),
            dir: dir.to_path_buf(),
            timeout,
            redactor: crate::redact::Redactor::new(url),
        }
    }

    async fn git(&self, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let err = |message: String| GitError {
            args: self.redactor.text(&args.join(" ")),
            message: self.redactor.text(&message),
        };
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(&self.dir)
            .args(args)
            // Never prompt for credentials; never read the user's config for hooks.
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .kill_on_drop(true);
        let out = tokio::time::timeout(self.timeout, cmd.output())
            .await
            .map_err(|_| err(format!("timed out after {:?}", self.timeout)))?
            .map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        Ok(out.stdout)
    }

    /// Creates the bare cache if it is not there.
    pub async fn init(&self) -> Result<(), GitError> {
        if self.dir.join("HEAD").exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| GitError {
            args: "init".into(),
            message: e.to_string(),
        })?;
        self.git(&["init", "--bare", "--quiet"]).await.map(|_| ())
    }

    /// Fetches the branch; returns its head commit.
    pub async fn fetch(&self) -> Result<String, GitError> {
        let refspec = format!("+refs/heads/{b}:refs/remotes/origin/{b}", b = self.branch);
        self.git(&["fetch", "--quiet", "--no-tags", &self.url, &refspec])
            .await?;
        self.rev(&format!("refs/remotes/origin/{}", self.branch))
            .await
    }

    /// The commit a name points at.
    pub async fn rev(&self, name: &str) -> Result<String, GitError> {
        let out = self
            .git(&["rev-parse", "--verify", &format!("{name}^{{commit}}")])
            .await?;
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }

    /// A commit's id, subject, author and time, as the admin page shows them.
    pub async fn commit_info(&self, commit: &str) -> Result<CommitInfo, GitError> {
        let out = self
            .git(&[
                "log",
                "-1",
                "--format=%H%x00%h%x00%s%x00%an%x00%aI",
                commit,
                "--",
            ])
            .await?;
        let text = String::from_utf8_lossy(&out);
        let mut f = text.trim_end().split('\0');
        let mut next = || f.next().unwrap_or("").to_string();
        let (id, short, message, author, time) = (next(), next(), next(), next(), next());
        let time = chrono::DateTime::parse_from_rfc3339(&time)
            .map(|t| {
                t.with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            })
            .unwrap_or(time);
        Ok(CommitInfo {
            id,
            short,
            message,
            author,
            time,
        })
    }

    /// True when the cache has this commit.
    pub async fn has(&self, commit: &str) -> bool {
        self.rev(commit).await.is_ok()
    }

    /// The `*.json` files under `folder` at `commit`: their contents, or their size when it
    /// is above `max_bytes` (read by name, never whole, so a huge file cannot fill memory).
    pub async fn files(
        &self,
        commit: &str,
        folder: &str,
        max_bytes: u64,
        max_total_bytes: u64,
    ) -> Result<Vec<(String, FileContent)>, GitError> {
        // `-z`: names come back as they are, not C-quoted (non-ASCII names stay readable);
        // `-l`: each blob's size, checked before it is read.
        let mut args = vec!["ls-tree", "-r", "-z", "-l", commit];
        let folder = folder.trim_matches('/');
        if !folder.is_empty() {
            args.push("--");
            args.push(folder);
        }
        let list = self.git(&args).await?;
        let entries: Vec<TreeEntry> = parse_ls_tree(&list)
            .into_iter()
            .filter(|e| e.path.ends_with(".json") && e.kind == "blob")
            .collect();
        // Many files each under the bound could still fill memory: nothing is read beyond this.
        let total: u64 = entries.iter().map(|e| e.size).sum();
        if total > max_total_bytes {
            let name = if folder.is_empty() { "/" } else { folder };
            return Ok(vec![(name.to_string(), FileContent::TotalTooLarge(total))]);
        }
        let mut out = Vec::new();
        for entry in entries {
            let content = if entry.size > max_bytes {
                FileContent::TooLarge(entry.size)
            } else {
                FileContent::Bytes(self.git(&["cat-file", "blob", &entry.object]).await?)
            };
            out.push((entry.path, content));
        }
        Ok(out)
    }

    /// The `*.json` files under `folder` that differ between two commits, from git's own
    /// trees (a push payload's file lists can miss what a force push dropped).
    pub async fn changed_files(
        &self,
        from: &str,
        to: &str,
        folder: &str,
    ) -> Result<Vec<String>, GitError> {
        let mut args = vec![
            "diff-tree",
            "-r",
            "-z",
            "--name-only",
            "--no-renames",
            from,
            to,
        ];
        let folder = folder.trim_matches('/');
        if !folder.is_empty() {
            args.push("--");
            args.push(folder);
        }
        let out = self.git(&args).await?;
        Ok(out
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect())
    }
}

/// A flag file's content as read from git.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContent {
    Bytes(Vec<u8>),
    /// Above `gitsync.max_file_bytes`: not read.
    TooLarge(u64),
    /// The flag files together are above `gitsync.max_total_bytes`: none is read.
    TotalTooLarge(u64),
}

struct TreeEntry {
    kind: String,
    object: String,
    size: u64,
    path: String,
}

/// `git ls-tree -r -z -l` records: `<mode> SP <type> SP <object> SP+ <size> TAB <path> NUL`.
fn parse_ls_tree(out: &[u8]) -> Vec<TreeEntry> {
    out.split(|b| *b == 0)
        .filter_map(|rec| {
            let tab = rec.iter().position(|b| *b == b'\t')?;
            let meta = std::str::from_utf8(&rec[..tab]).ok()?;
            let mut parts = meta.split_ascii_whitespace();
            let (_mode, kind, object, size) =
                (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            Some(TreeEntry {
                kind: kind.to_string(),
                object: object.to_string(),
                // Submodules show `-`; they are not blobs and are skipped anyway.
                size: size.parse().unwrap_or(0),
                path: String::from_utf8_lossy(&rec[tab + 1..]).into_owned(),
            })
        })
        .collect()
}

/// True when `file` lies under `folder` (everything does when the folder is the root).
pub fn under(file: &str, folder: &str) -> bool {
    let folder = folder.trim_matches('/');
    folder.is_empty() || file == folder || file.starts_with(&format!("{folder}/"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn under_folder() {
        assert!(super::under("flags/a.json", "flags"));
        assert!(super::under("flags/a.json", "/flags/"));
        assert!(!super::under("flagsx/a.json", "flags"));
        assert!(super::under("README.md", ""));
    }

    #[test]
    fn ls_tree_records_keep_names_as_they_are() {
        let out = "100644 blob 1111111111111111111111111111111111111111     120\tflagr/drapeaux-\u{e9}.json\0\
                   100644 blob 2222222222222222222222222222222222222222 9999999\tflagr/with space.json\0\
                   160000 commit 3333333333333333333333333333333333333333       -\tvendor\0";
        let e = super::parse_ls_tree(out.as_bytes());
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].path, "flagr/drapeaux-\u{e9}.json");
        assert_eq!((e[0].size, e[0].kind.as_str()), (120, "blob"));
        assert_eq!(e[1].path, "flagr/with space.json");
        assert_eq!(e[1].size, 9_999_999);
        assert_eq!(e[2].kind, "commit");
    }
}

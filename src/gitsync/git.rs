//! Git through the `git` command line: a bare cache per repository, fetch, read files.
//!
//! In: a repository URL (local path, `file://`, `git://`, `http(s)://`), a branch, a folder.
//! Out: commit ids and file contents. Never: writes to the remote, or runs a hook or a
//! command from the repository (bare cache, no checkout).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

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
}

impl Repo {
    pub fn new(url: &str, branch: &str, dir: &Path, timeout: Duration) -> Self {
        Self {
            url: url.to_string(),
            branch: branch.to_string(),
            dir: dir.to_path_buf(),
            timeout,
        }
    }

    async fn git(&self, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let err = |message: String| GitError {
            args: args.join(" "),
            message,
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

    /// True when the cache has this commit.
    pub async fn has(&self, commit: &str) -> bool {
        self.rev(commit).await.is_ok()
    }

    /// The `*.json` files under `folder` at `commit`, with their contents.
    pub async fn files(
        &self,
        commit: &str,
        folder: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, GitError> {
        let mut args = vec!["ls-tree", "-r", "--name-only", commit];
        let folder = folder.trim_matches('/');
        if !folder.is_empty() {
            args.push("--");
            args.push(folder);
        }
        let list = self.git(&args).await?;
        let mut out = Vec::new();
        for path in String::from_utf8_lossy(&list).lines() {
            if !path.ends_with(".json") {
                continue;
            }
            let content = self.git(&["show", &format!("{commit}:{path}")]).await?;
            out.push((path.to_string(), content));
        }
        Ok(out)
    }
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
}

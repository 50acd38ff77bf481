//! The `flaghook` binary: parse arguments, load config (exit 64 on a bad one), run until
//! SIGTERM or SIGINT, drain, exit 0.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flaghook::config::{Config, Overrides};

/// EX_USAGE from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    version,
    about = "Reverse-proxy sidecar for Flagr: change events and webhooks"
)]
struct Cli {
    /// Config file (TOML). Without it, the built-in defaults of config/flaghook.toml apply.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Flagr's URL, overriding proxy.upstream.
    #[arg(long)]
    upstream: Option<String>,
    /// Proxy listen address, overriding proxy.listen.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Admin listen address, overriding admin.listen.
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file and exit: 0 when valid, 64 with the problem otherwise.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
        /// Check secret references (`env:`, `file:`) without reading them.
        #[arg(long)]
        skip_secrets: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut overrides = Overrides {
        skip_secrets: false,
        upstream: cli.upstream.clone(),
        listen: cli.listen,
        admin_listen: cli.admin_listen,
    };
    if let Some(Command::CheckConfig { file, skip_secrets }) = &cli.command {
        overrides.skip_secrets = *skip_secrets;
        return match Config::load(Some(file), &env, &overrides) {
            Ok(c) => {
                println!(
                    "config ok: proxy {} -> {}, admin {}, {} webhook(s)",
                    c.proxy.listen,
                    c.proxy.upstream,
                    c.admin.listen,
                    c.webhooks.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    let cfg = match Config::load(cli.config.as_deref(), &env, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(&cfg);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cfg.runtime.worker_threads > 0 {
        builder.worker_threads(cfg.runtime.worker_threads);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let app = match flaghook::App::start(cfg).await {
            Ok(a) => a,
            Err(e) => {
                // The whole chain: "webhooks: url: ..." says what and why.
                let mut text = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    // Some errors show their cause in their own text already.
                    let c_text = c.to_string();
                    if !text.contains(&c_text) {
                        text.push_str(&format!(": {c_text}"));
                    }
                    cause = c.source();
                }
                tracing::error!("{text}");
                eprintln!("{text}");
                // A store that cannot be opened is the operator's to fix, like a bad config.
                if e.is_setup() {
                    return ExitCode::from(EXIT_CONFIG);
                }
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("signal received: shutting down");
        let report = app.shutdown().await;
        if report.undelivered > 0 {
            tracing::warn!(
                undelivered = report.undelivered,
                "webhook requests were not delivered before the deadline"
            );
        }
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

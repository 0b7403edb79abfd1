//! The `vr-agent` command line: parse, set up logging, dispatch.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use vr_agent::config::{BootstrapConfig, Config};

#[derive(Parser)]
#[command(
    name = "vr-agent",
    version,
    about = "Virtual router agent",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once; serve's settings are the large one"
)]
enum Cmd {
    /// Serve the management node's HTTP protocol (a flag given twice: the last one wins).
    #[command(args_override_self = true)]
    Serve {
        #[command(flatten)]
        config: Config,
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Configure the nics, ssh key and sysctls from the bootstrap info, and cache it.
    Bootstrap {
        #[command(flatten)]
        config: BootstrapConfig,
    },
    /// Print the md5 of FILE (default: this binary).
    Md5 {
        /// The file.
        file: Option<PathBuf>,
    },
    /// Print the version.
    Version,
    /// Summarize a running agent (health, counts, last commands, problems), or with
    /// --state-dir what the store of a stopped one holds.
    Status {
        /// The running agent.
        #[arg(long, default_value = "http://127.0.0.1:7272")]
        url: String,
        /// Read this state directory instead (the agent need not run).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Print the persisted desired state as JSON.
    State {
        /// Where the desired state is persisted.
        #[arg(long, default_value = "/var/lib/vr-agent")]
        state_dir: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VR_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // every event is bounded (vr_agent::logging): no request can write a 1 MB log line
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder
            .with_writer(vr_agent::logging::Bounded { json: false })
            .init(),
        LogFormat::Json => builder
            .json()
            .with_writer(vr_agent::logging::Bounded { json: true })
            .init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("vr-agent: cannot start the runtime: {e}");
            None
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Bootstrap { config } => {
            init_logging(LogFormat::Text);
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            let outcome = rt.block_on(vr_agent::bootstrap::run(&config));
            rt.shutdown_background();
            match outcome {
                Ok(done) => {
                    println!(
                        "bootstrap applied: {} nics in {:.1} ms",
                        done.nics,
                        done.elapsed.as_secs_f64() * 1e3
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %e, "bootstrap failed");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Serve { config, log_format } => {
            vr_agent::memory::configure();
            init_logging(log_format);
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(vr_agent::server::serve(config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "cannot serve");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Md5 { file } => {
            let path = file.unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
            match vr_agent::md5sum::md5_hex(&path) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vr-agent: {}: {e}", path.display());
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status { url, state_dir } => {
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(vr_agent::status::text(&url, state_dir.as_deref())) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vr-agent status: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Version => {
            println!("{}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Cmd::State { state_dir } => {
            let printed = vr_agent::state::store::Store::peek(&state_dir)
                .and_then(|state| serde_json::to_string_pretty(&state).map_err(|e| e.to_string()));
            match printed {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vr-agent: stored state in {}: {e}", state_dir.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

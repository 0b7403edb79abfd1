//! The `vr-agent` command line: parse, set up logging, dispatch.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use vr_agent::config::Config;

#[derive(Parser)]
#[command(name = "vr-agent", version, about = "Virtual router agent")]
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
    /// Print the md5 of FILE (default: this binary).
    Md5 {
        /// The file.
        file: Option<PathBuf>,
    },
    /// Print the version.
    Version,
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve { config, log_format } => {
            init_logging(log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("vr-agent: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
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
        Cmd::Version => {
            println!("{}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Cmd::State { state_dir } => match vr_agent::state::store::Store::open(&state_dir) {
            Ok((_, loaded)) => {
                if let Some(p) = loaded.problem {
                    eprintln!("vr-agent: {p}");
                }
                match serde_json::to_string_pretty(&loaded.state) {
                    Ok(s) => {
                        println!("{s}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("vr-agent: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("vr-agent: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

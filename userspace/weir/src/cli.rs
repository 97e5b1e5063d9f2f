//! Command line: parses arguments and turns every failure into one clear message and a
//! non-zero exit. Must not: hold logic of its own beyond choosing what to run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::App;

#[derive(Parser, Debug)]
#[command(name = "weir", version, about = "weir: node-level service-mesh data plane (eBPF steering + io_uring proxy)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the data plane until SIGTERM/SIGINT (SIGHUP reloads the config).
    Run {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Once ready, write the bound addresses here as JSON (`{"proxy": "IP:PORT", "admin":
        /// "IP:PORT"}`; written whole, then renamed into place): how a supervisor or a test
        /// learns the ports weir picked for a `listen` address with port 0.
        #[arg(long, value_name = "FILE")]
        ready_file: Option<PathBuf>,
    },
    /// Validate a config file and exit: 0 when valid, 1 with every problem listed otherwise.
    Check {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Inspect eBPF steering of a running weir.
    Steer {
        #[command(subcommand)]
        command: SteerCommand,
    },
}

#[derive(Subcommand, Debug)]
enum SteerCommand {
    /// What is attached where, and the kernel-side counters: asks the admin API, or reads the
    /// pins directly when weir is not running.
    Status {
        /// Admin address of the running weir.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: std::net::SocketAddr,
        /// Where weir pins its links and maps (`[steering] pin_dir`).
        #[arg(long, default_value = "/sys/fs/bpf/weir")]
        pin_dir: PathBuf,
    },
}

/// Entry point of the `weir` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match crate::app::load_config(&config) {
            // The memory limit is this process's own: `weir check` run where weir runs (in its
            // pod, or by the unit's ExecReload) sees the limit weir will see.
            Ok(c) => {
                match crate::memory::plan(&c, crate::app::resolve_workers(&c), crate::memory::cgroup_memory_limit()) {
                    Ok(memory) => {
                        println!(
                            "{}: ok ({} service{})",
                            config.display(),
                            c.services.len(),
                            if c.services.len() == 1 { "" } else { "s" }
                        );
                        println!("{}", memory.summary());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{}: {e}", config.display());
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, ready_file } => {
            let log = crate::logging::init_without_privileges();
            crate::allocator::start_background_purge();
            let code = match App::start(&config, crate::app::AppOptions { least_privilege: true }) {
                Ok(app) => match ready_file.as_deref().map(|path| (path, write_ready_file(path, &app))) {
                    Some((path, Err(e))) => {
                        eprintln!("weir: cannot write {}: {e}", path.display());
                        app.shutdown();
                        ExitCode::FAILURE
                    }
                    _ => app.run_until_signal(),
                },
                Err(e) => {
                    eprintln!("weir: cannot start: {e:#}");
                    ExitCode::FAILURE
                }
            };
            // The last lines ("drained; exiting") are still queued in the log writer: write
            // them out before the process exits.
            log.finish();
            code
        }
        Command::Steer { command: SteerCommand::Status { admin, pin_dir } } => {
            match crate::admin::get(admin, "/steering") {
                Ok(body) => {
                    println!("{body}");
                    ExitCode::SUCCESS
                }
                Err(admin_err) => match crate::steering::status_from_pins(&pin_dir) {
                    Ok(v) => {
                        eprintln!(
                            "weir: the admin API at {admin} does not answer ({admin_err}); reading pins under {}",
                            pin_dir.display()
                        );
                        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("weir: cannot read steering status: admin {admin}: {admin_err:#}; pins: {e:#}");
                        ExitCode::FAILURE
                    }
                },
            }
        }
    }
}

/// Writes the bound addresses of a ready weir to `path` (to a temporary file first, renamed
/// into place, so a reader never sees half of it).
fn write_ready_file(path: &std::path::Path, app: &App) -> std::io::Result<()> {
    let text = serde_json::json!({ "proxy": app.proxy_addr().to_string(), "admin": app.admin_addr().to_string() });
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{text}\n"))?;
    std::fs::rename(&tmp, path)
}

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
        /// Take over from the weir running with the same `[steering] pin_dir` and `[proxy]
        /// listen`, without failing a request: its sockets, eBPF links and counters pass to
        /// this one, then it drains and exits. Starts normally when no weir is running.
        #[arg(long)]
        takeover: bool,
        /// Run in the background: return once weir is ready (exit 0), or has failed to start
        /// (exit 1; its log says why). For a systemd unit's `ExecReload`.
        #[arg(long)]
        detach: bool,
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
                        // weir raises its soft limit to the hard one at start: plan for that.
                        let hard = crate::fds::nofile().map_or(1024, |(_, hard)| hard);
                        let workers = crate::app::resolve_workers(&c);
                        let fds = crate::fds::plan(c.proxy.max_connections, workers, hard);
                        if fds.fits() {
                            println!("{}", fds.summary());
                        } else {
                            eprintln!("{}: warning: {}", config.display(), fds.summary());
                        }
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
        Command::Run { detach: true, .. } => detach(),
        Command::Run { config, ready_file, takeover, detach: false } => {
            let log = crate::logging::init_without_privileges();
            crate::allocator::start_background_purge();
            let options = crate::app::AppOptions { least_privilege: true, takeover };
            let code = match App::start(&config, options) {
                Ok(app) => match ready_file.as_deref().map(|path| (path, write_ready_file(path, &app))) {
                    Some((path, Err(e))) => {
                        eprintln!("weir: cannot write {}: {e}", path.display());
                        app.shutdown();
                        ExitCode::FAILURE
                    }
                    _ => {
                        crate::notify::ready();
                        app.run_until_signal()
                    }
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

/// `weir run --detach`: runs the same command without `--detach` in a new session, and waits
/// (at most two minutes) for it to say it is ready through a pipe.
fn detach() -> ExitCode {
    use std::io::Read as _;
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    use std::os::unix::process::CommandExt as _;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("weir: cannot find its own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut fds = [0; 2];
    // SAFETY: pipe2 into a two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!("weir: cannot create a pipe: {}", std::io::Error::last_os_error());
        return ExitCode::FAILURE;
    }
    // SAFETY: pipe2 returned two new fds that nothing else owns.
    let (read_end, write_end) =
        unsafe { (std::fs::File::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) };
    let write_fd = write_end.as_raw_fd();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1).filter(|a| a != "--detach"))
        .env(crate::notify::READY_FD_ENV, write_fd.to_string())
        .stdin(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec (setsid, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if libc::fcntl(write_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weir: cannot start weir in the background: {e}");
            return ExitCode::FAILURE;
        }
    };
    drop(write_end);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut said = String::new();
        let mut read_end = read_end;
        let _ = read_end.read_to_string(&mut said);
        let _ = tx.send(said);
    });
    match rx.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok(said) if said.starts_with("ready") => {
            println!("weir: pid {} is ready", child.id());
            ExitCode::SUCCESS
        }
        Ok(_) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            eprintln!("weir: the new weir (pid {}) did not start ({status}); its log says why", child.id());
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("weir: the new weir (pid {}) is not ready after 120 s; stopping it", child.id());
            let _ = child.kill();
            ExitCode::FAILURE
        }
    }
}

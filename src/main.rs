//! The `sluice` command: a thin shell over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc rather than glibc's malloc: a request allocates several times,
/// and over TLS hyper's 8 KiB read buffer among them, a size glibc serves
/// outside its per-thread cache (benches/RESULTS.md compares the two).
/// `sluice::memory::Allocator` says why it is not the `mimalloc` crate's,
/// and `sluice::memory` how memory freed by parked connections goes back
/// to the system.
#[global_allocator]
static GLOBAL: sluice::memory::Allocator = sluice::memory::Allocator;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A reverse proxy that makes releases safe"
)]
struct Cli {
    /// Log format; default: text on a terminal, json otherwise.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Start the proxy.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// How often the config file is checked for changes; 0s turns the
        /// watch off (SIGHUP still reloads).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        watch_interval: std::time::Duration,
    },
    /// Start the proxy with two built-in demo backends and a 90/10 route.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Fraction (0..1) of requests the demo canary fails with 500.
        #[arg(long, default_value_t = 0.0)]
        canary_error_rate: f64,
        /// Requests per second of built-in user traffic (0: none).
        #[arg(long, default_value_t = 20)]
        traffic: u32,
    },
    /// Validate a config file and print a summary, or every problem.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Talk to a running proxy's admin API.
    Ctl {
        #[arg(long, env = "SLUICE_ADMIN", default_value = "http://127.0.0.1:9901")]
        admin: String,
        #[arg(long, env = "SLUICE_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        command: sluice::ctl::Command,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run {
            config,
            watch_interval,
        } => serve(Some((config, watch_interval)), None),
        Command::Demo {
            listen,
            admin,
            canary_error_rate,
            traffic,
        } => {
            if !(0.0..=1.0).contains(&canary_error_rate) {
                eprintln!("--canary-error-rate must be between 0 and 1, not {canary_error_rate}");
                return ExitCode::from(2);
            }
            serve(None, Some((listen, admin, canary_error_rate, traffic)))
        }
        Command::Ctl {
            admin,
            token_file,
            command,
        } => ctl(&admin, token_file, command),
    }
}

fn init_logging(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match sluice::config::load(path) {
        Ok(cfg) => {
            println!("{}: ok", path.display());
            println!(
                "  listeners: {}",
                cfg.listeners
                    .iter()
                    .map(|l| l.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!(
                "  admin: {}{}",
                cfg.admin.addr,
                if cfg.admin.token.is_some() {
                    " (token required for changes)"
                } else {
                    ""
                }
            );
            if let Some(f) = &cfg.fleet {
                println!(
                    "  fleet: rollouts judged on the pooled numbers of {{{}}} in {}, read {} behind each tick; {}",
                    f.matchers,
                    f.prometheus,
                    sluice::config::duration::format(f.lag),
                    f.replicas.map_or("replicas counted in Prometheus".to_string(), |n| format!("{n} replicas"))
                );
            }
            println!("  digest: {}", cfg.digest);
            match &cfg.access_log {
                None => {}
                Some(sluice::config::AccessLogTarget::Stdout) => {
                    println!("  access log: standard output")
                }
                Some(sluice::config::AccessLogTarget::File(f)) => {
                    println!("  access log: {}", f.display())
                }
            }
            for r in &cfg.routes {
                let total: u64 = r.backends.iter().map(|b| b.weight as u64).sum();
                let split: Vec<String> = r
                    .backends
                    .iter()
                    .map(|b| format!("{} {:.1}%", b.name, b.weight as f64 * 100.0 / total as f64))
                    .collect();
                println!("  route {}: {}", r.name, split.join(", "));
                for b in &r.backends {
                    if let Some(tls) = &b.target.tls {
                        let roots = match tls.ca.len() {
                            0 => "the built-in public roots".to_string(),
                            1 => "the certificate of tls.ca".to_string(),
                            n => format!("the {n} certificates of tls.ca"),
                        };
                        let identity = if tls.identity.is_empty() {
                            ""
                        } else {
                            ", presenting the client certificate of tls.cert"
                        };
                        let over = match b.target.protocol {
                            sluice::config::Protocol::Http2 => "HTTP/2 over TLS",
                            sluice::config::Protocol::Http1 => "TLS",
                        };
                        println!(
                            "    {}: {over} to {}, its certificate checked for {} against {roots}{identity}",
                            b.name,
                            b.target.authority,
                            tls.server_name.to_str()
                        );
                    }
                }
                if let Some(m) = &r.mirror {
                    println!(
                        "    mirror: {} % of requests copied to {}, answers discarded",
                        m.per_10000 as f64 / 100.0,
                        r.backends[m.backend].name
                    );
                }
                if let Some(plan) = &r.rollout {
                    let stages: Vec<String> = plan
                        .stages
                        .iter()
                        .map(|s| {
                            format!(
                                "{} % for {}",
                                s.weight,
                                sluice::config::duration::format(s.bake)
                            )
                        })
                        .collect();
                    let gates: Vec<&str> = plan.gates.iter().map(|g| g.name.as_str()).collect();
                    println!(
                        "    rollout {} → {}: {}; gates: {}; {} smoke check(s)",
                        r.backends[plan.baseline].name,
                        r.backends[plan.canary].name,
                        stages.join(" → "),
                        if gates.is_empty() {
                            "none".to_string()
                        } else {
                            gates.join(", ")
                        },
                        plan.smoke.len()
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            let n = problems.0.len();
            eprintln!(
                "{}: {n} problem{}",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            for p in &problems.0 {
                eprintln!("  {p}");
            }
            ExitCode::from(1)
        }
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    sluice::config::duration::parse(s)
}

fn serve(
    config_path: Option<(PathBuf, std::time::Duration)>,
    demo: Option<(SocketAddr, SocketAddr, f64, u32)>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config_path, demo)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(
    file: Option<(PathBuf, std::time::Duration)>,
    demo: Option<(SocketAddr, SocketAddr, f64, u32)>,
) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let watch_interval = file.as_ref().map(|f| f.1);
    let config_path = file.map(|f| f.0);
    let config = match (&config_path, demo) {
        (Some(path), _) => match sluice::config::load(path) {
            Ok(c) => c,
            Err(problems) => {
                eprintln!("{}: invalid config", path.display());
                for p in &problems.0 {
                    eprintln!("  {p}");
                }
                return Ok(ExitCode::from(1));
            }
        },
        (None, Some((listen, admin, error_rate, _))) => {
            let stable = sluice::demo::start_backend("stable", 0.0)
                .await
                .context("starting the demo backends")?;
            let canary = sluice::demo::start_backend("canary", error_rate)
                .await
                .context("starting the demo backends")?;
            let doc = sluice::demo::document(listen, admin, stable, canary);
            sluice::config::validate(doc, std::path::Path::new("."))
                .map_err(|p| anyhow::anyhow!("demo config: {p}"))?
        }
        (None, None) => unreachable!("run needs a config or the demo"),
    };
    let demo_mode = config_path.is_none();
    let running = sluice::server::start(
        config,
        sluice::server::Options {
            config_path,
            watch_interval,
            ..Default::default()
        },
    )
    .await
    .context("cannot start")?;
    if let Some((_, _, _, per_second)) = demo {
        sluice::demo::traffic(running.proxy_addr(), per_second);
    }
    if demo_mode {
        // Whoever reads these may stop reading (`sluice demo | head -1`):
        // a closed stdout must not take the proxy down, so write errors are
        // ignored rather than panicking as `println!` would.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "proxy:     http://{}", running.proxy_addr())
            .and_then(|_| writeln!(out, "admin:     http://{}", running.admin_addr))
            .and_then(|_| writeln!(out, "dashboard: http://{}/", running.admin_addr))
            .and_then(|_| {
                writeln!(
                    out,
                    "try:       curl -H 'x-user-id: alice' http://{}/",
                    running.proxy_addr()
                )
            })
            .and_then(|_| {
                writeln!(
                    out,
                    "watch:     sluice ctl --admin http://{} watch demo",
                    running.admin_addr
                )
            })
            .and_then(|_| out.flush());
    }
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                if let Err(p) = running.reload("signal") {
                    tracing::error!(problems = %p, "reload on SIGHUP rejected; the running table keeps serving");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn ctl(admin: &str, token_file: Option<PathBuf>, command: sluice::ctl::Command) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let result = runtime.block_on(async {
        let ctl = sluice::ctl::Ctl::new(admin, token_file.as_deref())?;
        ctl.run(command).await
    });
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

//! Starting and stopping a whole sluice: control plane, listeners, admin
//! API, config watcher. The binary and the tests start it the same way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::control::ControlPlane;
use crate::journal::Journal;
use crate::stats::prom::Metrics;

/// How sluice was started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The file to watch and reload on SIGHUP; none for a config built in code.
    pub config_path: Option<PathBuf>,
    /// How often the file is checked for changes (default 1 s; zero: never).
    pub watch_interval: Option<Duration>,
    /// Where relative paths resolve when there is no config file (default:
    /// the config file's directory, else the working directory).
    pub base_dir: Option<PathBuf>,
    /// Data-plane threads, each with its own single-threaded runtime and its
    /// own accepting socket per listener (default: one per available core).
    /// The caller's runtime keeps the control side (admin API, rollouts).
    pub workers: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
    #[error("cannot start a data-plane worker: {0}")]
    Worker(std::io::Error),
    #[error("cannot open the journal in the state directory: {0}")]
    Journal(std::io::Error),
    #[error("cannot open the access log {0}")]
    AccessLog(std::io::Error),
}

/// A running sluice.
pub struct Running {
    /// The proxy listeners' bound addresses, in config order.
    pub proxy_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub control: Arc<ControlPlane>,
    pub rollouts: Arc<crate::rollout::controller::Rollouts>,
    pub config_path: Option<PathBuf>,
    shutdown: watch::Sender<bool>,
    /// Tells worker threads to end once draining is over.
    stopped: watch::Sender<bool>,
    connections: Arc<crate::proxy::Connections>,
    tasks: Vec<JoinHandle<()>>,
    access_log: Option<Arc<crate::access_log::AccessLog>>,
}

/// Binds every listener, then serves. Returns once all are bound.
pub async fn start(config: Config, options: Options) -> Result<Running, StartError> {
    let base_dir = options
        .base_dir
        .clone()
        .or_else(|| {
            options
                .config_path
                .as_deref()
                .map(crate::config::base_dir_of)
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let journal = Arc::new(Journal::open(config.state_dir.clone()).map_err(StartError::Journal)?);
    let listener_specs = config.listeners.clone();
    let admin_cfg = config.admin.clone();
    let max_connections = config.limits.max_connections;

    let workers = options
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    crate::worker::reserve(workers);
    // One accepting socket per listener per worker, all on the same address.
    let mut sockets: Vec<crate::proxy::Sockets> = (0..workers).map(|_| Vec::new()).collect();
    let mut proxy_addrs = Vec::new();
    for spec in &listener_specs {
        let tls = match &spec.tls {
            None => None,
            Some(files) => {
                Some(crate::tls::server_config(&files.cert, &files.key).map_err(StartError::Tls)?)
            }
        };
        let mut addr = spec.addr;
        for worker in sockets.iter_mut() {
            let l = crate::proxy::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
            // Port 0 picks a port once; the other workers join it.
            addr = l
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            worker.push((l, tls.clone()));
        }
        proxy_addrs.push(addr);
    }
    let admin_listener = crate::proxy::bind(admin_cfg.addr)
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|source| StartError::Bind {
            addr: admin_cfg.addr,
            source,
        })?;

    let access_log = match &config.access_log {
        None => None,
        Some(target) => {
            Some(crate::access_log::AccessLog::open(target).map_err(StartError::AccessLog)?)
        }
    };
    let metrics = Metrics::new();
    let control = Arc::new(ControlPlane::new(
        config,
        base_dir,
        metrics.clone(),
        journal,
        access_log.clone(),
        "startup",
    ));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let connections = crate::proxy::Connections::new(max_connections);
    let (stopped, stopped_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // Every worker serves on its own thread and runtime; this runtime keeps
    // the control side (admin API, rollouts, reloads), so a table change
    // never stalls requests behind it.
    let mut ready = Vec::new();
    for (i, worker) in sockets.into_iter().enumerate() {
        let (table, connections, shutdown_rx) = (
            control.table_handle(),
            connections.clone(),
            shutdown_rx.clone(),
        );
        let mut stopped_rx = stopped_rx.clone();
        let (listening, ready_rx) = tokio::sync::oneshot::channel();
        ready.push(ready_rx);
        let spawned = std::thread::Builder::new()
            .name(format!("sluice-worker-{i}"))
            .spawn(move || {
                crate::worker::set_current(i);
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = listening.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let result =
                        crate::proxy::spawn_listeners(worker, &table, &connections, &shutdown_rx);
                    let _ = listening.send(result.map(drop));
                    // Connections live on this runtime until sluice has drained.
                    let _ = stopped_rx.wait_for(|s| *s).await;
                });
            });
        if let Err(e) = spawned {
            let _ = stopped.send(true);
            return Err(StartError::Worker(e));
        }
    }
    for listening in ready {
        match listening.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = stopped.send(true);
                return Err(StartError::Worker(e));
            }
            Err(_) => {
                let _ = stopped.send(true);
                return Err(StartError::Worker(std::io::Error::other(
                    "a worker thread ended before listening",
                )));
            }
        }
    }
    let admin_addr = admin_listener
        .local_addr()
        .expect("a bound listener has an address");
    let rollouts = crate::rollout::controller::Rollouts::new(
        control.clone(),
        control.current().config.state_dir.clone(),
    );
    tasks.push(tokio::spawn(rollouts.clone().run()));
    let admin = Arc::new(Admin {
        connections: connections.clone(),
        control: control.clone(),
        rollouts: rollouts.clone(),
        token: admin_cfg.token.clone(),
        ready: Default::default(),
    });
    tasks.push(tokio::spawn(admin::serve(
        admin_listener,
        admin.clone(),
        shutdown_rx.clone(),
    )));
    let watch_every = options.watch_interval.unwrap_or(Duration::from_secs(1));
    if let (Some(path), false) = (&options.config_path, watch_every.is_zero()) {
        tasks.push(tokio::spawn(crate::reload::watch_file(
            control.clone(),
            path.clone(),
            watch_every,
            shutdown_rx.clone(),
        )));
    }
    admin.ready.store(true, Ordering::Release);
    let listening: Vec<String> = proxy_addrs.iter().map(|a| a.to_string()).collect();
    tracing::info!(proxy = %listening.join(","), admin = %admin_addr, "sluice is serving");
    Ok(Running {
        proxy_addrs,
        admin_addr,
        control,
        rollouts,
        config_path: options.config_path,
        shutdown,
        stopped,
        connections,
        tasks,
        access_log,
    })
}

impl Running {
    /// The first proxy listener's address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addrs[0]
    }

    /// Re-reads the config file (what SIGHUP does).
    pub fn reload(&self, actor: &str) -> Result<u64, crate::config::Problems> {
        match &self.config_path {
            Some(p) => crate::reload::reload_file(&self.control, p, actor),
            None => Err(crate::config::Problem::new(
                "",
                "started without a config file; nothing to reload",
            )
            .into()),
        }
    }

    /// Stops accepting, asks open connections to finish (keep-alives close
    /// after their response, HTTP/2 gets GOAWAY), waits for them up to the
    /// drain timeout, then stops everything. Returns whether all finished.
    pub async fn shutdown(self) -> bool {
        let drain = self.control.current().config.limits.drain_timeout;
        let _ = self.shutdown.send(true);
        tracing::info!(?drain, "draining");
        let all = tokio::time::timeout(drain, self.connections.closed())
            .await
            .is_ok();
        if !all {
            tracing::warn!("drain timeout reached with connections still open");
        }
        self.rollouts.stop();
        let _ = self.stopped.send(true);
        for t in &self.tasks {
            t.abort();
        }
        // The drained requests' lines, written before this returns; within
        // a bound, as a log on a pipe nobody reads would block for ever.
        if let Some(log) = &self.access_log {
            let log = log.clone();
            let closing = tokio::task::spawn_blocking(move || log.close());
            if tokio::time::timeout(Duration::from_secs(2), closing)
                .await
                .is_err()
            {
                tracing::warn!("the access log could not write its last lines in 2 s");
            }
        }
        all
    }
}

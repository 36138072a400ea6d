//! The one writer of the routing table. Every change — a file reload,
//! `PUT /config`, new weights, a rollback, a restore, a controller decision —
//! goes through [`ControlPlane::apply`]: it builds the new document, validates
//! it, compiles it, stores it with one atomic swap, keeps it in history and
//! journals it. Nothing else calls `store`, and changes are serialized, so two
//! writers never race.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::config::{self, raw::Document, Config, Problem, Problems};
use crate::journal::{now_rfc3339, Journal};
use crate::stats::prom::Metrics;
use crate::table::{Registry, Table};

mod document;
mod history;

/// How many table versions history keeps.
const HISTORY: usize = 100;

/// A change to the table.
#[derive(Debug, Clone)]
pub enum Change {
    /// A whole new document (file reload, `PUT /config`). Sections that
    /// cannot change at runtime (listeners, admin, state_dir) may be left
    /// out and are then kept.
    Replace(Box<Document>),
    /// New weights for some of a route's backends; the rest keep theirs.
    Weights {
        route: String,
        weights: BTreeMap<String, u64>,
    },
    /// All weight to the route's baseline.
    Rollback { route: String },
    /// The document of an earlier version.
    Restore { version: u64 },
    /// A rollout controller's weights for its route: named backends get
    /// their weight, the others 0. Remembered, so that a reload of a config
    /// with the same rollout keeps them.
    Rollout {
        route: String,
        fingerprint: String,
        weights: BTreeMap<String, u64>,
        /// The rollout goes on driving the route (a stage's weights), or
        /// leaves it (promoted, rolled back, aborted).
        active: bool,
    },
}

impl Change {
    fn describe(&self) -> String {
        match self {
            Change::Replace(_) => "new configuration".into(),
            Change::Weights { route, weights } => {
                let w: Vec<String> = weights.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("weights of route {route}: {}", w.join(" "))
            }
            Change::Rollback { route } => format!("rollback of route {route}"),
            Change::Restore { version } => format!("restore of version {version}"),
            Change::Rollout { route, weights, .. } => {
                let w: Vec<String> = weights.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("rollout weights of route {route}: {}", w.join(" "))
            }
        }
    }

    fn route(&self) -> Option<&str> {
        match self {
            Change::Weights { route, .. }
            | Change::Rollback { route }
            | Change::Rollout { route, .. } => Some(route),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Change::Replace(_) => "config",
            Change::Weights { .. } => "weights",
            Change::Rollback { .. } => "rollback",
            Change::Restore { .. } => "restore",
            Change::Rollout { .. } => "rollout_weights",
        }
    }
}

/// Why a change was refused. The running table is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(Problems),
    /// A person's change to the weights of a route a running rollout
    /// drives: refused, saying how to proceed.
    #[error("{0}")]
    Owned(String),
}

/// One version of the table, as history keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    pub version: u64,
    pub time: String,
    pub actor: String,
    pub reason: String,
    pub document: Arc<Document>,
}

pub struct ControlPlane {
    table: Arc<ArcSwap<Table>>,
    writer: std::sync::Mutex<Writer>,
    pub journal: Arc<Journal>,
    pub metrics: Metrics,
    /// Where relative paths of documents sent through the API resolve.
    base_dir: PathBuf,
    state_dir: Option<PathBuf>,
    /// The version in use, for those who react to swaps (rollout controllers).
    changes: tokio::sync::watch::Sender<u64>,
}

struct Writer {
    registry: Registry,
    /// Weights rollout controllers set, by route, with their rollout's fingerprint.
    rollout_weights: HashMap<String, (String, BTreeMap<String, u64>)>,
    /// The routes whose weights a running rollout drives, with its id: the
    /// one place that says who owns a route's weights.
    owners: HashMap<String, String>,
    history: VecDeque<Version>,
    next_version: u64,
    /// The table last replaced. Requests in flight still hold it; keeping
    /// it here until the next change means its last reference (ten thousand
    /// routes to free) drops on this thread, not on a worker mid-request.
    retired: Option<Arc<Table>>,
}

impl ControlPlane {
    /// Starts from a validated config as the first version (or the next one
    /// after what `state_dir` remembers).
    pub fn new(
        config: Config,
        base_dir: PathBuf,
        metrics: Metrics,
        journal: Arc<Journal>,
        access_log: Option<Arc<crate::access_log::AccessLog>>,
        actor: &str,
    ) -> Self {
        let state_dir = config.state_dir.clone();
        let mut history: VecDeque<Version> = state_dir
            .as_ref()
            .and_then(|d| std::fs::read(d.join("history.json")).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let version = history.back().map_or(1, |v| v.version + 1);
        let mut registry = Registry::new(metrics.clone());
        registry.access_log = access_log;
        let document = config.document.clone();
        let table = registry.compile(Arc::new(config), version);
        history.push_back(Version {
            version,
            time: now_rfc3339(jiff::Timestamp::now()),
            actor: actor.to_string(),
            reason: "started".into(),
            document,
        });
        while history.len() > HISTORY {
            history.pop_front();
        }
        metrics.config_version().set(version as f64);
        metrics.reloads("ok").absolute(0);
        metrics.reloads("rejected").absolute(0);
        let cp = ControlPlane {
            table: Arc::new(ArcSwap::from_pointee(table)),
            writer: std::sync::Mutex::new(Writer {
                registry,
                rollout_weights: HashMap::new(),
                owners: HashMap::new(),
                history,
                next_version: version + 1,
                retired: None,
            }),
            journal,
            metrics,
            base_dir,
            state_dir,
            changes: tokio::sync::watch::channel(version).0,
        };
        cp.persist_history(&cp.lock());
        cp.journal.record(
            None,
            "started",
            actor,
            format!("serving table version {version}"),
            serde_json::json!({ "version": version }),
        );
        cp
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handle the data plane loads its snapshot from: it reads, and
    /// cannot swap.
    pub fn table_handle(&self) -> crate::table::TableReader {
        crate::table::TableReader::new(self.table.clone())
    }

    /// Tells of every swap (the new version).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The table in use now.
    pub fn current(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Validates and applies a change; on any problem nothing changes and
    /// the rejection is counted and journaled.
    pub fn apply(
        &self,
        change: Change,
        actor: &str,
        why: Option<&str>,
    ) -> Result<Arc<Table>, Rejection> {
        let mut w = self.lock();
        let current = self.table.load_full();
        if let Some(refusal) = refused_for_an_owner(&w, &change) {
            self.metrics.reloads("rejected").increment(1);
            self.journal.record(
                change.route(),
                "change_rejected",
                actor,
                format!("{}: {refusal}", change.describe()),
                serde_json::json!({ "problems": [refusal.to_string()] }),
            );
            return Err(refusal);
        }
        let reason = why.map_or_else(
            || change.describe(),
            |w| format!("{}: {w}", change.describe()),
        );
        // A change of one route's weights revalidates and recompiles that
        // route alone; everything else is shared with the current table.
        let scoped = match &change {
            Change::Weights { route, .. }
            | Change::Rollback { route }
            | Change::Rollout { route, .. } => current.config.route_index(route),
            _ => None,
        };
        let result = self
            .next_document(&w, &current, &change)
            .and_then(|doc| match scoped {
                Some(i) => {
                    let route = config::revalidate_route(
                        &doc.routes[i],
                        i,
                        &self.base_dir,
                        &current.config.routes[i],
                    )
                    .map_err(Rejection::Invalid)?;
                    // Only weights change here, so the routes with rollout
                    // plans (and their fingerprints) are shared as they are.
                    debug_assert_eq!(
                        config::plan::fingerprint(&doc.routes[i], doc.fleet.is_some()),
                        config::plan::fingerprint(
                            &current.config.document.routes[i],
                            doc.fleet.is_some()
                        )
                    );
                    let mut cfg = (*current.config).clone();
                    *cfg.routes.get_mut(i).expect("the route's index") = Arc::new(route);
                    // A rollout's weights are not part of the digest; a
                    // person's weights on any other route are.
                    if doc.routes[i].rollout.is_none() {
                        cfg.digest = config::digest(&doc).into();
                    }
                    cfg.document = Arc::new(doc);
                    Ok(cfg)
                }
                None => config::validate(doc, &self.base_dir)
                    .map_err(Rejection::Invalid)
                    .and_then(|cfg| self.check_fixed(&current.config, cfg)),
            });
        let cfg = match result {
            Ok(cfg) => cfg,
            Err(rejection) => {
                self.metrics.reloads("rejected").increment(1);
                let detail = match &rejection {
                    Rejection::Invalid(p) => serde_json::json!({ "problems": p.0 }),
                    Rejection::NotFound(m) | Rejection::Owned(m) => {
                        serde_json::json!({ "problems": [m] })
                    }
                };
                self.journal.record(
                    change.route(),
                    "change_rejected",
                    actor,
                    format!(
                        "{reason} rejected; version {} keeps serving",
                        current.version
                    ),
                    detail,
                );
                return Err(rejection);
            }
        };
        // A reload of an unchanged file (a ConfigMap touched, SIGHUP twice)
        // is not a new version.
        if matches!(change, Change::Replace(_)) && *cfg.document == *current.config.document {
            return Ok(current);
        }
        match &change {
            Change::Rollout {
                route,
                fingerprint,
                weights,
                active,
            } => {
                w.rollout_weights
                    .insert(route.clone(), (fingerprint.clone(), weights.clone()));
                if *active {
                    w.owners.insert(route.clone(), fingerprint.clone());
                } else {
                    w.owners.remove(route);
                }
            }
            // A person set the weights: a later reload must not bring back
            // what a finished rollout had set.
            Change::Weights { route, .. } | Change::Rollback { route } => {
                w.rollout_weights.remove(route);
            }
            Change::Restore { .. } | Change::Replace(_) => {}
        }
        // A document whose route has another rollout, or none, leaves the
        // old one no claim on the route.
        if matches!(change, Change::Replace(_) | Change::Restore { .. }) {
            let fleet = cfg.fleet.is_some();
            let doc = &cfg.document;
            w.owners.retain(|route, id| {
                cfg.route_index(route)
                    .and_then(|i| config::plan::fingerprint(&doc.routes[i], fleet))
                    .is_some_and(|now| now == *id)
            });
        }
        let version = w.next_version;
        w.next_version += 1;
        let document = cfg.document.clone();
        let table = Arc::new(match scoped {
            Some(i) => w
                .registry
                .recompile_route(&current, Arc::new(cfg), i, version),
            None => w.registry.compile(Arc::new(cfg), version),
        });
        self.table.store(table.clone());
        w.retired = Some(current.clone());
        self.changes.send_replace(version);
        self.metrics.config_version().set(version as f64);
        self.metrics.reloads("ok").increment(1);
        w.history.push_back(Version {
            version,
            time: now_rfc3339(jiff::Timestamp::now()),
            actor: actor.to_string(),
            reason: reason.clone(),
            document,
        });
        while w.history.len() > HISTORY {
            w.history.pop_front();
        }
        self.persist_history(&w);
        let changed: Vec<&crate::table::Route> = match change.route() {
            Some(name) => table.route_named(name).into_iter().collect(),
            None => table.routes.iter().map(|r| &**r).collect(),
        };
        let weights: BTreeMap<&str, BTreeMap<&str, u32>> = changed
            .into_iter()
            .map(|r| {
                (
                    &*r.name,
                    r.backends.iter().map(|b| (&*b.name, b.weight)).collect(),
                )
            })
            .collect();
        self.journal.record(
            change.route(),
            change.kind(),
            actor,
            format!("table version {version} in use: {reason}"),
            serde_json::json!({ "version": version, "previous": current.version, "weights": weights }),
        );
        Ok(table)
    }
}

/// A person's change that would set the weights of a route a running
/// rollout drives. A whole document (a reload, `PUT /config`, a restore)
/// is not refused: the rollout's weights are kept in it.
fn refused_for_an_owner(w: &Writer, change: &Change) -> Option<Rejection> {
    let route = match change {
        Change::Weights { route, .. } | Change::Rollback { route } => route,
        _ => return None,
    };
    let id = w.owners.get(route)?;
    Some(Rejection::Owned(format!(
        "route {route} is under rollout {id}, which sets its weights: abort it first (POST /routes/{route}/rollout/abort, or sluice ctl abort {route}), or pause or promote it"
    )))
}

impl ControlPlane {
    /// The id of the running rollout that drives the route's weights, if
    /// one does.
    pub fn owner(&self, route: &str) -> Option<String> {
        self.lock().owners.get(route).cloned()
    }
}

fn no_route(route: &str) -> Rejection {
    Rejection::NotFound(format!("no route named \"{route}\""))
}

/// The named route of a document derived from `config`'s, for changing.
fn find_route<'a>(
    doc: &'a mut Document,
    config: &config::Config,
    route: &str,
) -> Result<&'a mut config::raw::Route, Rejection> {
    config
        .route_index(route)
        .and_then(|i| doc.routes.get_mut(i))
        .filter(|r| r.name == route)
        .map(Arc::make_mut)
        .ok_or_else(|| no_route(route))
}

impl ControlPlane {
    /// Counts and journals a change that failed before it became a
    /// [`Change`] (a config file that does not parse).
    pub fn reject_unparsed(&self, problems: &Problems, actor: &str, what: &str) {
        self.metrics.reloads("rejected").increment(1);
        let version = self.table.load().version;
        self.journal.record(
            None,
            "change_rejected",
            actor,
            format!("{what} rejected; version {version} keeps serving"),
            serde_json::json!({ "problems": problems.0 }),
        );
    }
}

//! Reloading the config file: on SIGHUP, and when the file changes.
//!
//! The watcher polls the path, following symlinks, and compares content. A
//! Kubernetes ConfigMap volume updates by swapping a `..data` symlink, which
//! inotify on the file itself never reports; polling the resolved content
//! catches that, an editor's rename-over, and an in-place write alike, with
//! no inotify watch limits to hit. A deleted or unreadable file changes
//! nothing: the running table keeps serving until a valid file appears.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{self, Problems, Syntax};
use crate::control::{Change, ControlPlane, Rejection};

/// Reads the config file and applies it. Returns the new table version.
pub fn reload_file(control: &ControlPlane, path: &Path, actor: &str) -> Result<u64, Problems> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let p: Problems = config::Problem::new("", format!("cannot read {}: {e}", path.display())).into();
        tracing::warn!(path = %path.display(), error = %e, "config file unreadable; keeping the running table");
        p
    })?;
    apply_text(control, path, &text, actor)
}

fn apply_text(
    control: &ControlPlane,
    path: &Path,
    text: &str,
    actor: &str,
) -> Result<u64, Problems> {
    let syntax = if path.extension().is_some_and(|e| e == "json") {
        Syntax::Json
    } else {
        Syntax::Yaml
    };
    let what = format!("reload of {}", path.display());
    let doc = config::parse_document(text, syntax)
        .inspect_err(|p| control.reject_unparsed(p, actor, &what))?;
    match control.apply(Change::Replace(Box::new(doc)), actor, Some(&what)) {
        Ok(table) => Ok(table.version),
        Err(Rejection::Invalid(p)) => Err(p),
        Err(Rejection::NotFound(m) | Rejection::Owned(m)) => {
            Err(config::Problem::new("", m).into())
        }
    }
}

/// Polls `path` every `every` and applies it when its content changes.
pub async fn watch_file(
    control: Arc<ControlPlane>,
    path: PathBuf,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = std::fs::read(&path).ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        // fs::read follows every symlink in the chain, so a swapped
        // `..data` link shows up as changed content.
        let Ok(now) = tokio::fs::read(&path).await else {
            continue;
        };
        if last.as_deref() == Some(now.as_slice()) {
            continue;
        }
        last = Some(now.clone());
        match String::from_utf8(now) {
            Ok(text) => {
                if let Err(p) = apply_text(&control, &path, &text, "file") {
                    tracing::error!(path = %path.display(), problems = %p, "config change rejected; the running table keeps serving");
                }
            }
            Err(_) => tracing::error!(path = %path.display(), "config file is not UTF-8; ignored"),
        }
    }
}

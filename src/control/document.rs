//! The document a change makes: the new one of a reload (sections bound
//! at start kept), a route's new weights, a rollback, an earlier version;
//! the rollout's weights kept where the rollout is the same; what may not
//! change while sluice runs.

use super::*;

impl ControlPlane {
    pub(super) fn next_document(
        &self,
        w: &Writer,
        current: &Table,
        change: &Change,
    ) -> Result<Document, Rejection> {
        let mut doc = self.changed_document(w, current, change)?;
        // Routes under a rollout keep the controller's weights across
        // reloads and restores, as long as the rollout is the same one.
        if matches!(change, Change::Replace(_) | Change::Restore { .. }) {
            let fleet = doc.fleet.is_some();
            for i in 0..doc.routes.len() {
                let r = &doc.routes[i];
                let Some(fp) = config::plan::fingerprint(r, fleet) else {
                    continue;
                };
                let Some((known, weights)) = w.rollout_weights.get(&r.name) else {
                    continue;
                };
                if *known == fp {
                    let r = Arc::make_mut(doc.routes.get_mut(i).expect("in range"));
                    for b in &mut r.backends {
                        b.weight = weights.get(&b.name).copied().unwrap_or(0);
                    }
                    end_copies_to_a_rolled_back_canary(r);
                }
            }
        }
        Ok(doc)
    }

    pub(super) fn changed_document(
        &self,
        w: &Writer,
        current: &Table,
        change: &Change,
    ) -> Result<Document, Rejection> {
        let mut doc = (*current.config.document).clone();
        match change {
            Change::Replace(new) => {
                let mut new = (**new).clone();
                if new.listeners.is_empty() {
                    new.listeners = doc.listeners;
                }
                if new.admin.is_none() {
                    new.admin = doc.admin;
                }
                if new.state_dir.is_none() {
                    new.state_dir = doc.state_dir;
                }
                if new.access_log.is_none() {
                    new.access_log = doc.access_log;
                }
                Ok(new)
            }
            Change::Weights { route, weights } => {
                let r = find_route(&mut doc, &current.config, route)?;
                let mut problems = Vec::new();
                for (name, weight) in weights {
                    match r.backends.iter_mut().find(|b| &b.name == name) {
                        Some(b) => b.weight = *weight,
                        None => problems.push(Problem::new(
                            format!("weights.{name}"),
                            format!(
                                "route {route} has no backend named \"{name}\" (backends: {})",
                                r.backends
                                    .iter()
                                    .map(|b| b.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )),
                    }
                }
                if weights.is_empty() {
                    problems.push(Problem::new(
                        "weights",
                        "name at least one backend and its weight",
                    ));
                }
                if problems.is_empty() {
                    Ok(doc)
                } else {
                    Err(Rejection::Invalid(Problems(problems)))
                }
            }
            Change::Rollout { route, weights, .. } => {
                let r = find_route(&mut doc, &current.config, route)?;
                for b in &mut r.backends {
                    b.weight = weights.get(&b.name).copied().unwrap_or(0);
                }
                end_copies_to_a_rolled_back_canary(r);
                Ok(doc)
            }
            Change::Rollback { route } => {
                let baseline = current
                    .route_named(route)
                    .map(|r| r.baseline)
                    .ok_or_else(|| no_route(route))?;
                let r = find_route(&mut doc, &current.config, route)?;
                for (i, b) in r.backends.iter_mut().enumerate() {
                    b.weight = if i == baseline { 100 } else { 0 };
                }
                // Nothing but the baseline hears from this route any more,
                // copies included.
                if r.mirror
                    .as_ref()
                    .is_some_and(|m| r.backends.get(baseline).is_none_or(|b| b.name != m.backend))
                {
                    r.mirror = None;
                }
                Ok(doc)
            }
            Change::Restore { version } => w
                .history
                .iter()
                .find(|v| v.version == *version)
                .map(|v| (*v.document).clone())
                .ok_or_else(|| {
                    Rejection::NotFound(format!(
                        "no version {version} in history (kept: {})",
                        w.history
                            .iter()
                            .map(|v| v.version.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }),
        }
    }

    /// Sections bound at start cannot change underneath a running process.
    pub(super) fn check_fixed(&self, current: &Config, new: Config) -> Result<Config, Rejection> {
        let mut problems = Vec::new();
        if new.listeners != current.listeners {
            problems.push(Problem::new(
                "listeners",
                "cannot change while sluice runs; restart it to listen elsewhere",
            ));
        }
        if new.admin != current.admin {
            problems.push(Problem::new(
                "admin",
                "cannot change while sluice runs; restart it to apply",
            ));
        }
        if new.state_dir != current.state_dir {
            problems.push(Problem::new(
                "state_dir",
                "cannot change while sluice runs; restart it to apply",
            ));
        }
        if new.access_log != current.access_log {
            problems.push(Problem::new(
                "access_log",
                "cannot change while sluice runs; restart it to apply",
            ));
        }
        if new.limits.max_connections != current.limits.max_connections {
            problems.push(Problem::new(
                "limits.max_connections",
                "cannot change while sluice runs; restart it to apply",
            ));
        }
        if problems.is_empty() {
            Ok(new)
        } else {
            Err(Rejection::Invalid(Problems(problems)))
        }
    }
}

/// A rollout that rolled back (or was aborted) leaves its canary at weight
/// 0; a mirror to that canary ends with it, so that after a rollback no
/// request reaches the canary, not even as a copy. (A mirror to a canary at
/// weight 0 before or while a rollout runs is left alone: that is shadow
/// testing.) A reload of the same rollout keeps them ended; a config
/// with a new rollout (or none) brings them back.
pub(super) fn end_copies_to_a_rolled_back_canary(r: &mut config::raw::Route) {
    let (Some(plan), Some(mirror)) = (&r.rollout, &r.mirror) else {
        return;
    };
    let canary_weight = r
        .backends
        .iter()
        .find(|b| b.name == plan.canary)
        .map_or(0, |b| b.weight);
    if mirror.backend == plan.canary && canary_weight == 0 {
        r.mirror = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml_tail: &str) -> config::raw::Route {
        let doc = config::parse_document(
            &format!(
                "routes:\n  - name: api\n    backends: [{{ name: stable, url: \"http://127.0.0.1:1\" }}, {{ name: canary, url: \"http://127.0.0.1:2\", weight: 0 }}]\n{yaml_tail}"
            ),
            config::Syntax::Yaml,
        )
        .unwrap();
        (*doc.routes[0]).clone()
    }

    #[test]
    fn a_rolled_back_canary_gets_no_copies_but_a_dark_one_does() {
        let plan = "    rollout: { baseline: stable, canary: canary }\n";
        // Weight 0 after a rollout's change: it rolled back.
        let mut r = route(&format!("    mirror: {{ backend: canary }}\n{plan}"));
        end_copies_to_a_rolled_back_canary(&mut r);
        assert!(r.mirror.is_none());
        // The rollout is running: the canary has weight.
        let mut r = route(&format!("    mirror: {{ backend: canary }}\n{plan}"));
        r.backends[1].weight = 10;
        end_copies_to_a_rolled_back_canary(&mut r);
        assert!(r.mirror.is_some());
        // No rollout: nothing rolls back, the dark canary keeps its copies.
        let mut r = route("    mirror: { backend: canary }\n");
        end_copies_to_a_rolled_back_canary(&mut r);
        assert!(r.mirror.is_some());
        // A mirror to the baseline is no copy to the canary.
        let mut r = route(&format!("    mirror: {{ backend: stable }}\n{plan}"));
        end_copies_to_a_rolled_back_canary(&mut r);
        assert!(r.mirror.is_some());
    }
}

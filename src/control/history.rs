//! The versions kept, in memory and in `state_dir/history.json`.

use super::*;

impl ControlPlane {
    pub(super) fn persist_history(&self, w: &Writer) {
        let Some(dir) = &self.state_dir else { return };
        let bytes = serde_json::to_vec(&w.history).expect("history serializes");
        if let Err(e) = crate::state::write_atomic(&dir.join("history.json"), &bytes) {
            tracing::error!(error = %e, dir = %dir.display(), "cannot persist table history");
        }
    }

    /// History, oldest first.
    pub fn history(&self) -> Vec<Version> {
        self.lock().history.iter().cloned().collect()
    }
}

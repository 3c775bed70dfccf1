//! What the manifest grants a component besides messaging: its variables,
//! the key-value stores it may open and the hosts its outbound HTTP may
//! reach. Built once per component at load; each instance shares it.

use crate::app::{AllowedHosts, ComponentVariables};
use crate::keyvalue::KeyValueStore;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

/// How many different refusals of one component are logged.
const REFUSALS_LOGGED: usize = 256;

/// One component's grants.
pub struct Grants {
    /// The app and component, for log lines.
    pub(super) app: String,
    pub(super) component: String,
    /// `[component.<id>.variables]`, resolved.
    pub(super) variables: ComponentVariables,
    /// The same, for wasmtime-wasi-config's `wasi:config/store@0.2.0-rc.1`.
    pub(super) config: wasmtime_wasi_config::WasiConfigVariables,
    /// The stores of its `key_value_stores`, by label.
    pub(super) stores: BTreeMap<String, Arc<dyn KeyValueStore>>,
    /// `allowed_outbound_hosts`.
    pub(super) outbound: AllowedHosts,
    /// Refusals already logged (a destination, a store label), so that a
    /// guest retrying in a loop does not flood the log.
    refused: Mutex<HashSet<String>>,
}

impl Grants {
    /// The grants of component `component` of `app`.
    pub fn new(
        app: &str,
        component: &str,
        variables: ComponentVariables,
        stores: BTreeMap<String, Arc<dyn KeyValueStore>>,
        outbound: AllowedHosts,
    ) -> Arc<Grants> {
        let config = variables.0.iter().collect();
        Arc::new(Grants {
            app: app.into(),
            component: component.into(),
            variables,
            config,
            stores,
            outbound,
            refused: Mutex::default(),
        })
    }

    /// None at all: what a component gets when the embedder grants nothing.
    pub fn none(app: &str, component: &str) -> Arc<Grants> {
        Self::new(
            app,
            component,
            ComponentVariables::default(),
            BTreeMap::new(),
            AllowedHosts::default(),
        )
    }

    /// Whether `what` is refused for the first time (and so worth a log
    /// line). At most [`REFUSALS_LOGGED`] different ones are remembered.
    pub(super) fn first_refusal(&self, what: String) -> bool {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.len() < REFUSALS_LOGGED && refused.insert(what)
    }
}

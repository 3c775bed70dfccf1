//! A component's variables, as Spin answers them: `fermyon:spin/variables`
//! (what spin-sdk components import) and `wasi:config/store`, in Spin's
//! version (`0.2.0-draft-2024-09-27`) and in wasmtime-wasi-config's
//! (`0.2.0-rc.1`). Values were resolved at load; a component sees only its
//! own `[component.<id>.variables]`.

use super::State;
use super::bindings::{spin_variables, wasi_config};
use crate::app::variable_name_problem;

impl spin_variables::Host for State {
    async fn get(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<String, spin_variables::Error>> {
        use spin_variables::Error;
        if let Some(why) = variable_name_problem(&name) {
            return Ok(Err(Error::InvalidName(format!("{name:?}: {why}"))));
        }
        let grants = &self.grants;
        Ok(grants.variables.0.get(&name).cloned().ok_or_else(|| {
            Error::Undefined(format!("no variable for {:?}.{name:?}", grants.component))
        }))
    }
}

impl wasi_config::Host for State {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, wasi_config::Error>> {
        Ok(Ok(self.grants.variables.0.get(&key).cloned()))
    }

    async fn get_all(
        &mut self,
    ) -> wasmtime::Result<Result<Vec<(String, String)>, wasi_config::Error>> {
        let all = &self.grants.variables.0;
        Ok(Ok(all
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()))
    }
}

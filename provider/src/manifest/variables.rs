//! Spin application variables: `[variables]` declares them, `{{ name }}`
//! templates use them, and values come from `spin up --variable` first,
//! then `SPIN_VARIABLE_<NAME>` environment variables, then the declared
//! default (Spin's order of providers).

use anyhow::Context as _;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Values given with `--variable`, set once when the command line is read.
static GIVEN: OnceLock<HashMap<String, String>> = OnceLock::new();

/// Makes `--variable` values the first source of every variable in the
/// process (the command line is read once; later calls change nothing).
pub fn set_given(values: HashMap<String, String>) {
    let _ = GIVEN.set(values);
}

fn given(name: &str) -> Option<String> {
    GIVEN.get()?.get(name).cloned()
}

/// One `--variable` argument, as Spin takes it: `KEY=VALUE`, `KEY=@FILE`
/// (the file's text), or `@FILE.json` / `@FILE.toml` (a table of names to
/// strings).
#[derive(Clone, Debug)]
pub enum VariableSource {
    /// `KEY=VALUE`.
    Literal(String, String),
    /// `KEY=@FILE`.
    FileContent(String, PathBuf),
    /// `@FILE.json`.
    JsonFile(PathBuf),
    /// `@FILE.toml`.
    TomlFile(PathBuf),
}

impl std::str::FromStr for VariableSource {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix('@') {
            let path = PathBuf::from(path);
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => Ok(VariableSource::JsonFile(path)),
                Some("toml") => Ok(VariableSource::TomlFile(path)),
                _ => Err(format!(
                    "variable files must end in .json or .toml (got {text:?})"
                )),
            }
        } else if let Some((key, value)) = text.split_once('=') {
            match value.strip_prefix('@') {
                Some(path) => Ok(VariableSource::FileContent(key.into(), path.into())),
                None => Ok(VariableSource::Literal(key.into(), value.into())),
            }
        } else {
            Err(format!(
                "expected KEY=VALUE, KEY=@FILE, @FILE.json or @FILE.toml (got {text:?})"
            ))
        }
    }
}

impl VariableSource {
    /// The values this source gives, reading its file if it names one.
    pub fn read(&self) -> anyhow::Result<HashMap<String, String>> {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .with_context(|| format!("--variable: cannot read {}", path.display()))
        };
        Ok(match self {
            VariableSource::Literal(key, value) => [(key.clone(), value.clone())].into(),
            VariableSource::FileContent(key, path) => [(key.clone(), read(path)?)].into(),
            VariableSource::JsonFile(path) => {
                serde_json::from_str(&read(path)?).with_context(|| {
                    format!(
                        "--variable: {} is not a JSON object of strings",
                        path.display()
                    )
                })?
            }
            VariableSource::TomlFile(path) => toml::from_str(&read(path)?).with_context(|| {
                format!(
                    "--variable: {} is not a TOML table of strings",
                    path.display()
                )
            })?,
        })
    }
}

/// A declared variable (`[variables] name = { default = "...", ... }`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    /// The value used when no provider has one.
    pub default: Option<String>,
    /// Whether loading fails when no value is found.
    #[serde(default)]
    pub required: bool,
    /// Secret values are never printed.
    #[serde(default)]
    pub secret: bool,
    /// For people reading the manifest.
    #[allow(dead_code)]
    pub description: Option<String>,
}

/// An app's variables, ready to resolve templates.
#[derive(Clone, Debug, Default)]
pub struct Variables {
    decls: BTreeMap<String, VariableDecl>,
    /// The runtime config has no `[variables]`: any name resolves from the
    /// environment alone (how secrets reach link settings).
    environment_only: bool,
}

impl Variables {
    /// Checks declarations: names follow Spin's rule
    /// ([`crate::app::variable_name_problem`]), and a variable is either
    /// required or has a default.
    pub fn new(decls: BTreeMap<String, VariableDecl>) -> Result<Variables, (String, String)> {
        for (name, decl) in &decls {
            if let Some(why) = crate::app::variable_name_problem(name) {
                return Err((
                    name.clone(),
                    format!("`{name}` is not a variable name: it {why}"),
                ));
            }
            if decl.required == decl.default.is_some() {
                return Err((
                    name.clone(),
                    "a variable has either `required = true` or a `default`, not both or neither"
                        .into(),
                ));
            }
        }
        Ok(Variables {
            decls,
            environment_only: false,
        })
    }

    /// Variables for the runtime config: every `{{ name }}` comes from the
    /// `SPIN_VARIABLE_<NAME>` environment variable.
    pub fn environment_only() -> Variables {
        Variables {
            decls: BTreeMap::new(),
            environment_only: true,
        }
    }

    /// The value of one variable.
    pub fn get(&self, name: &str) -> Result<String, String> {
        let env = format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase());
        if self.environment_only {
            return given(name)
                .or_else(|| std::env::var(&env).ok())
                .ok_or_else(|| {
                    format!("`{{{{ {name} }}}}` needs `--variable {name}=...` or the environment variable {env}")
                });
        }
        let decl = self
            .decls
            .get(name)
            .ok_or_else(|| format!("variable `{name}` is not declared in [variables]"))?;
        if let Some(value) = given(name).or_else(|| std::env::var(&env).ok()) {
            return Ok(value);
        }
        decl.default.clone().ok_or_else(|| {
            format!(
                "variable `{name}` is required: set the environment variable {env} or give `--variable {name}=...`"
            )
        })
    }

    /// Replaces every `{{ name }}` in `template`.
    pub fn resolve(&self, template: &str) -> Result<String, String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed `{{{{` in {template:?}"))?;
            out.push_str(&self.get(after[..end].trim())?);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Resolves templates in every string of a TOML value found at `at`, in
    /// place; the error carries the path of the failing string.
    pub fn resolve_all(
        &self,
        value: &mut toml::Value,
        at: &super::KeyPath,
    ) -> Result<(), (super::KeyPath, String)> {
        fn walk(
            vars: &Variables,
            v: &mut toml::Value,
            at: super::KeyPath,
        ) -> Result<(), (super::KeyPath, String)> {
            match v {
                toml::Value::String(s) if s.contains("{{") => {
                    *s = vars.resolve(s).map_err(|e| (at, e))?;
                }
                toml::Value::Array(items) => {
                    for (i, item) in items.iter_mut().enumerate() {
                        walk(vars, item, at.index(i))?;
                    }
                }
                toml::Value::Table(t) => {
                    for (k, item) in t.iter_mut() {
                        walk(vars, item, at.key(k.clone()))?;
                    }
                }
                _ => {}
            }
            Ok(())
        }
        walk(self, value, at.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Variables {
        let mut d = BTreeMap::new();
        d.insert(
            "prefix".into(),
            VariableDecl {
                default: Some("prod".into()),
                ..Default::default()
            },
        );
        d.insert(
            "token_xq".into(),
            VariableDecl {
                required: true,
                ..Default::default()
            },
        );
        Variables::new(d).unwrap()
    }

    #[test]
    fn resolves_defaults_and_reports_missing() {
        let v = vars();
        assert_eq!(v.resolve("{{ prefix }}.orders").unwrap(), "prod.orders");
        assert!(v.resolve("{{nope}}").unwrap_err().contains("not declared"));
        assert!(
            v.resolve("{{ token_xq }}")
                .unwrap_err()
                .contains("SPIN_VARIABLE_TOKEN_XQ")
        );
        assert!(v.resolve("{{ prefix").unwrap_err().contains("unclosed"));
    }

    #[test]
    fn rejects_bad_declarations() {
        let mut d = BTreeMap::new();
        d.insert(
            "Bad".into(),
            VariableDecl {
                default: Some("x".into()),
                ..Default::default()
            },
        );
        assert!(Variables::new(d).is_err());
    }
}

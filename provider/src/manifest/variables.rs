//! Spin application variables: `[variables]` declares them, `{{ name }}`
//! templates use them, and values come from `SPIN_VARIABLE_<NAME>`
//! environment variables first, then the declared default (as Spin's
//! environment provider does).

use serde::Deserialize;
use std::collections::BTreeMap;

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
            return std::env::var(&env)
                .map_err(|_| format!("`{{{{ {name} }}}}` needs the environment variable {env}"));
        }
        let decl = self
            .decls
            .get(name)
            .ok_or_else(|| format!("variable `{name}` is not declared in [variables]"))?;
        if let Ok(value) = std::env::var(&env) {
            return Ok(value);
        }
        decl.default.clone().ok_or_else(|| {
            format!("variable `{name}` is required: set the environment variable {env}")
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

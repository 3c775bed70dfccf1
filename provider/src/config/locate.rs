//! Key paths and their lines: deserialisation and validation speak in key
//! paths, users want lines, and this turns one into the other.

use super::{ConfigError, ConfigErrors};
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// A path to a value in a TOML or JSON document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Segment>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl KeyPath {
    /// The path of `key` below this one.
    pub fn key(&self, key: impl Into<String>) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.into()));
        p
    }

    /// The path of element `index` below this one.
    pub fn index(&self, index: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Segment::Index(index));
        p
    }

    /// Parses a dotted path such as `trigger.messaging`.
    pub fn dotted(path: &str) -> KeyPath {
        KeyPath(
            path.split('.')
                .map(|k| Segment::Key(k.to_string()))
                .collect(),
        )
    }

    /// Appends the path serde reported, plus the field an "unknown field"
    /// message names (serde reports those at the parent table).
    fn join_serde(&self, path: &serde_path_to_error::Path, message: &str) -> KeyPath {
        let mut p = self.clone();
        for seg in path.iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => p.0.push(Segment::Index(*index)),
                serde_path_to_error::Segment::Map { key } => p.0.push(Segment::Key(key.clone())),
                serde_path_to_error::Segment::Enum { .. }
                | serde_path_to_error::Segment::Unknown => {}
            }
        }
        if let Some(rest) = message.strip_prefix("unknown field `")
            && let Some(end) = rest.find('`')
        {
            let field = &rest[..end];
            if p.0.last() != Some(&Segment::Key(field.to_string())) {
                p.0.push(Segment::Key(field.to_string()));
            }
        }
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => write!(f, "{k}")?,
                Segment::Key(k)
                    if k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
                {
                    write!(f, ".{k}")?
                }
                Segment::Key(k) => write!(f, ".{k:?}")?,
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// A configuration file and what is needed to point into it. TOML files have
/// lines; a JSON file (a Spin locked app) is pointed into by key path alone.
pub struct TomlSource {
    file: PathBuf,
    text: String,
    doc: Option<toml_edit::Document<String>>,
}

impl TomlSource {
    /// Reads and parses a TOML file; a syntax error is reported with its line.
    pub fn read(file: &Path) -> Result<(TomlSource, toml::Table), ConfigErrors> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::file(file, format!("cannot read the file: {e}")))?;
        Self::parse(file, text)
    }

    /// Parses TOML text that was read from `file`.
    pub fn parse(file: &Path, text: String) -> Result<(TomlSource, toml::Table), ConfigErrors> {
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| line_of(&text, s.start));
            ConfigError {
                file: file.to_path_buf(),
                key: String::new(),
                line,
                message: format!("not valid TOML: {}", e.message()),
            }
        })?;
        let doc = toml_edit::Document::parse(text.clone()).ok();
        Ok((
            TomlSource {
                file: file.to_path_buf(),
                text,
                doc,
            },
            table,
        ))
    }

    /// A source with no lines to point at (e.g. JSON).
    pub fn without_lines(file: &Path) -> TomlSource {
        TomlSource {
            file: file.to_path_buf(),
            text: String::new(),
            doc: None,
        }
    }

    /// The file this source was read from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// An error at `key`, with the line of the key (or of its nearest
    /// enclosing table when the key is missing).
    pub fn error(&self, key: &KeyPath, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: key.to_string(),
            line: self.line(key),
            message: message.into(),
        }
    }

    /// Deserialises `value`, found at `at`, reporting a wrong type or an
    /// unknown key at its own path and line.
    pub fn deserialize<T: DeserializeOwned, V>(
        &self,
        at: &KeyPath,
        value: V,
    ) -> Result<T, ConfigError>
    where
        V: serde::Deserializer<'static>,
        V::Error: fmt::Display,
    {
        serde_path_to_error::deserialize(value).map_err(|e| {
            // toml's errors end with an "in `key`" line; the path says that better.
            let message = e.inner().to_string();
            let message = message
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            let key = at.join_serde(e.path(), &message);
            self.error(&key, message)
        })
    }

    fn line(&self, key: &KeyPath) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut best = None;
        let mut item = Node::Table(doc.as_table());
        for seg in &key.0 {
            let (next, span) = match (item, seg) {
                (Node::Table(t), Segment::Key(k)) => {
                    let span = t.key(k).and_then(|k| k.span());
                    (t.get(k).map(Node::from_item), span)
                }
                (Node::Inline(t), Segment::Key(k)) => {
                    let span = t.key(k).and_then(|k| k.span());
                    (t.get(k).map(Node::Value), span)
                }
                (Node::Tables(a), Segment::Index(i)) => {
                    let t = a.get(*i);
                    (t.map(Node::Table), t.and_then(|t| t.span()))
                }
                (Node::Value(toml_edit::Value::Array(a)), Segment::Index(i)) => {
                    let v = a.get(*i);
                    (v.map(Node::Value), v.and_then(|v| v.span()))
                }
                _ => (None, None),
            };
            best = span.or(best);
            match next {
                Some(n) => item = n,
                None => break,
            }
        }
        best.map(|s| line_of(&self.text, s.start))
    }
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a toml_edit::Table),
    Inline(&'a toml_edit::InlineTable),
    Tables(&'a toml_edit::ArrayOfTables),
    Value(&'a toml_edit::Value),
}

impl<'a> Node<'a> {
    fn from_item(item: &'a toml_edit::Item) -> Node<'a> {
        match item {
            toml_edit::Item::Table(t) => Node::Table(t),
            toml_edit::Item::ArrayOfTables(a) => Node::Tables(a),
            toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => Node::Inline(t),
            toml_edit::Item::Value(v) => Node::Value(v),
            toml_edit::Item::None => unreachable!("a parsed document holds no empty items"),
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_keys_tables_and_array_elements() {
        let text = "a = 1\n[t]\nx = [\n  \"one\",\n  \"two\",\n]\n[[arr]]\nk = 1\n[[arr]]\nk = 2\n";
        let (src, _) = TomlSource::parse(Path::new("f.toml"), text.into()).unwrap();
        let line = |p: KeyPath| src.line(&p);
        assert_eq!(line(KeyPath::dotted("a")), Some(1));
        assert_eq!(line(KeyPath::dotted("t.x").index(1)), Some(5));
        assert_eq!(line(KeyPath::dotted("arr").index(1).key("k")), Some(10));
        assert_eq!(line(KeyPath::dotted("t.missing")), Some(2));
        assert_eq!(KeyPath::dotted("t.x").index(1).to_string(), "t.x[1]");
    }
}

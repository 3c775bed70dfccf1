//! Who may use the `--listen` endpoint, as Dapr's API token decides it: when
//! any token is configured, every request must carry one as
//! `Authorization: Bearer <token>`.
//!
//! - The endpoint-wide token reaches every app. It comes from the
//!   environment ([`TOKEN_ENV`]) or from a file (`--api-token-file`, or the
//!   file named by [`TOKEN_FILE_ENV`]) — never from a command-line value,
//!   which other users of the machine could read.
//! - A per-app token (`--app-token-file APP=FILE`) reaches only that app's
//!   channels: a valid token of another app is refused with 403.
//!
//! Tokens are kept only as SHA-256 digests and compared in constant time, so
//! neither a token nor its length shows in how long a refusal takes, and
//! none is ever printed.

use anyhow::Context as _;
use axum::http::HeaderValue;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use subtle::ConstantTimeEq as _;

/// The environment variable holding the endpoint-wide API token; `publish`
/// and `tail` send it too.
pub const TOKEN_ENV: &str = "TRIGGER_MESSAGING_API_TOKEN";

/// The environment variable naming a file that holds the API token (the
/// same as `--api-token-file`).
pub const TOKEN_FILE_ENV: &str = "TRIGGER_MESSAGING_API_TOKEN_FILE";

/// An API token as given: printable ASCII, no spaces. Its `Debug` never
/// shows it.
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    /// Checks a token read from `source` (named in errors; the token never
    /// is). Surrounding whitespace, such as a file's last newline, is dropped.
    pub fn parse(text: &str, source: &str) -> anyhow::Result<ApiToken> {
        let token = text.trim();
        anyhow::ensure!(!token.is_empty(), "the API token from {source} is empty");
        anyhow::ensure!(
            token.bytes().all(|b| b.is_ascii_graphic()),
            "the API token from {source} must be printable ASCII without spaces (it travels in an HTTP header)"
        );
        Ok(ApiToken(token.to_string()))
    }

    /// Reads a token from a file.
    pub fn from_file(path: &Path) -> anyhow::Result<ApiToken> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the API token file {}", path.display()))?;
        ApiToken::parse(&text, &format!("file {}", path.display()))
    }

    /// The token this process is given: [`TOKEN_ENV`], or `file` (from
    /// `--api-token-file` or [`TOKEN_FILE_ENV`]); both at once is a mistake.
    pub fn configured(file: Option<&Path>) -> anyhow::Result<Option<ApiToken>> {
        let from_env = match std::env::var(TOKEN_ENV) {
            Ok(text) => Some(ApiToken::parse(&text, TOKEN_ENV)?),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!("the API token in {TOKEN_ENV} is not valid Unicode")
            }
        };
        match (from_env, file) {
            (Some(_), Some(path)) => anyhow::bail!(
                "{TOKEN_ENV} and an API token file ({}) are both set: give the token one way",
                path.display()
            ),
            (Some(token), None) => Ok(Some(token)),
            (None, Some(path)) => Ok(Some(ApiToken::from_file(path)?)),
            (None, None) => Ok(None),
        }
    }

    /// The `Authorization` header that carries the token, marked sensitive
    /// so that HTTP libraries do not log it.
    pub fn authorization(&self) -> HeaderValue {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0))
            .expect("a printable ASCII token is a valid header value");
        value.set_sensitive(true);
        value
    }

    fn digest(&self) -> [u8; 32] {
        digest(self.0.as_bytes())
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The tokens the endpoint accepts; none by default, and then it is open.
#[derive(Clone, Default)]
pub struct ApiTokens {
    all_apps: Option<[u8; 32]>,
    per_app: BTreeMap<String, [u8; 32]>,
}

impl std::fmt::Debug for ApiTokens {
    /// Says which tokens there are, never what they are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTokens")
            .field("all_apps", &self.all_apps.is_some())
            .field("apps", &self.per_app.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Who a request was made by, once its token is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No token is configured: the endpoint is open (loopback only, for
    /// local development).
    Anyone,
    /// The endpoint-wide token: every app.
    AllApps,
    /// An app's own token: that app only.
    App(String),
}

impl Caller {
    /// Whether this caller may reach `app`'s channels.
    pub fn may_reach(&self, app: &str) -> bool {
        match self {
            Caller::Anyone | Caller::AllApps => true,
            Caller::App(own) => own == app,
        }
    }
}

/// Why a request's credentials were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    Malformed,
    /// A bearer token that is none of the configured ones.
    Invalid,
}

impl ApiTokens {
    /// The endpoint-wide token, if one is given.
    pub fn all_apps(token: Option<&ApiToken>) -> ApiTokens {
        ApiTokens {
            all_apps: token.map(ApiToken::digest),
            per_app: BTreeMap::new(),
        }
    }

    /// Adds a token that reaches only `app`.
    pub fn with_app(mut self, app: impl Into<String>, token: &ApiToken) -> ApiTokens {
        self.per_app.insert(app.into(), token.digest());
        self
    }

    /// Whether requests must carry a token.
    pub fn required(&self) -> bool {
        self.all_apps.is_some() || !self.per_app.is_empty()
    }

    /// The caller an `Authorization` header stands for. Every configured
    /// token is compared, in constant time, whatever matches.
    pub fn authenticate(&self, authorization: Option<&HeaderValue>) -> Result<Caller, Refusal> {
        if !self.required() {
            return Ok(Caller::Anyone);
        }
        let value = authorization.ok_or(Refusal::Missing)?.as_bytes();
        let token = bearer_token(value).ok_or(Refusal::Malformed)?;
        let presented = digest(token);
        let mut all_apps = false;
        if let Some(expected) = &self.all_apps {
            all_apps = bool::from(expected.ct_eq(&presented));
        }
        let mut app = None;
        for (name, expected) in &self.per_app {
            if bool::from(expected.ct_eq(&presented)) {
                app = Some(name);
            }
        }
        match (all_apps, app) {
            (true, _) => Ok(Caller::AllApps),
            (false, Some(name)) => Ok(Caller::App(name.clone())),
            (false, None) => Err(Refusal::Invalid),
        }
    }
}

/// The token of `Bearer <token>` (the scheme in any case, RFC 7235).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).unwrap()
    }

    #[test]
    fn tokens_decide_who_is_calling() {
        let all = ApiToken::parse("all-token", "test").unwrap();
        let a = ApiToken::parse("a-token\n", "test").unwrap();
        let tokens = ApiTokens::all_apps(Some(&all)).with_app("a", &a);
        let check = |h: Option<&str>| tokens.authenticate(h.map(header).as_ref());
        assert_eq!(check(Some("Bearer all-token")), Ok(Caller::AllApps));
        assert_eq!(check(Some("bearer  a-token")), Ok(Caller::App("a".into())));
        assert_eq!(check(None), Err(Refusal::Missing));
        assert_eq!(check(Some("Basic all-token")), Err(Refusal::Malformed));
        assert_eq!(check(Some("Bearer")), Err(Refusal::Malformed));
        assert_eq!(check(Some("Bearer all-token2")), Err(Refusal::Invalid));
        assert!(Caller::App("a".into()).may_reach("a"));
        assert!(!Caller::App("a".into()).may_reach("b"));
    }

    #[test]
    fn no_token_leaves_the_endpoint_open() {
        assert_eq!(ApiTokens::default().authenticate(None), Ok(Caller::Anyone));
    }

    #[test]
    fn bad_tokens_are_refused_without_showing_them() {
        let err = ApiToken::parse("has space", "X").unwrap_err().to_string();
        assert!(
            err.contains("from X") && !err.contains("has space"),
            "{err}"
        );
        assert!(ApiToken::parse(" \n", "X").is_err());
        assert_eq!(
            format!("{:?}", ApiToken::parse("s3cret", "X").unwrap()),
            "ApiToken(<redacted>)"
        );
    }
}

//! `allowed_outbound_hosts`: where a component's outbound HTTP may go, in
//! Spin's syntax and with Spin's matching rules, so a component moves
//! between Spin's http trigger and this one without changes.
//!
//! An entry is `<scheme>://<host>[:<port>]`:
//! - scheme: letters, or `*` for any;
//! - host: a name, `*.<domain>` (its subdomains, not the domain itself),
//!   an IP address or CIDR network (matching IP hosts only), or `*`;
//! - port: a number, a half-open range `a..b`, `*`, or nothing for the
//!   scheme's well-known port (only for schemes that have one).
//!
//! `*://*:*` allows everything.

use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;

/// Where Spin's docs explain the syntax; every parse error ends with it.
const LEARN_MORE: &str = "Learn more: https://spinframework.dev/v3/http-outbound#granting-http-permissions-to-components";

/// The parsed `allowed_outbound_hosts` of one component.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    patterns: Vec<HostPattern>,
}

/// One entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HostPattern {
    /// `None`: any scheme.
    scheme: Option<String>,
    host: HostMatch,
    port: PortMatch,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Any,
    /// A host name, lower case.
    Name(String),
    /// `*.<domain>`: stored as `.<domain>`.
    Subdomains(String),
    Network(IpNet),
    /// `self` / `self.alt`: the app's own HTTP routes, which a messaging
    /// component has none of; accepted for Spin manifests, matches nothing.
    OwnApp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortMatch {
    Any,
    /// `start..end`, end excluded; a single port is `p..p+1`.
    Range(u16, u32),
}

/// The well-known port of a scheme, as Spin knows them.
pub fn well_known_port(scheme: &str) -> Option<u16> {
    Some(match scheme {
        "http" => 80,
        "https" => 443,
        "postgres" => 5432,
        "mysql" => 3306,
        "redis" => 6379,
        "mqtt" => 1883,
        _ => return None,
    })
}

impl AllowedHosts {
    /// Parses a component's entries (templates already resolved); the
    /// error names the entry's index and what is wrong with it.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowedHosts, (usize, String)> {
        let patterns = entries
            .iter()
            .enumerate()
            .map(|(i, entry)| HostPattern::parse(entry.as_ref()).map_err(|e| (i, e)))
            .collect::<Result<_, _>>()?;
        Ok(AllowedHosts { patterns })
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether a request to `scheme://host[:port]` may go out; `port` is
    /// `None` when the URL has none (the scheme's well-known port is meant).
    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let scheme = scheme.to_ascii_lowercase();
        let port = port.or_else(|| well_known_port(&scheme));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => Target::Ip(ip),
            Err(_) => Target::Name(host.to_ascii_lowercase()),
        };
        self.patterns
            .iter()
            .any(|p| p.matches(&scheme, &host, port))
    }
}

enum Target {
    Ip(IpAddr),
    Name(String),
}

impl HostPattern {
    fn parse(entry: &str) -> Result<HostPattern, String> {
        let entry = entry.trim();
        if entry == "insecure:allow-all" {
            return Err(
                "'insecure:allow-all' is not allowed - use '*://*:*' instead if you really want to allow all outbound traffic".into(),
            );
        }
        let Some((scheme, rest)) = entry.split_once("://") else {
            if ["*", ":", "", "?"].contains(&entry) {
                return Err(format!(
                    "{entry:?} is not an allowed outbound host format.\nHosts must be in the form <scheme>://<host>[:<port>], with '*' wildcards allowed for each.\nIf you intended to allow all outbound networking, you can use '*://*:*' - this will obviate all network sandboxing.\n{LEARN_MORE}"
                ));
            }
            return Err(format!(
                "{entry:?} does not contain a scheme (e.g., 'http://' or '*://')\n{LEARN_MORE}"
            ));
        };
        let scheme = match scheme {
            "*" => None,
            s if s.starts_with('{') => return Err("scheme lists are not supported".into()),
            s if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphabetic()) => {
                Some(s.to_ascii_lowercase())
            }
            s => {
                return Err(format!(
                    "scheme {s:?} is not `*` or a name of letters\n{LEARN_MORE}"
                ));
            }
        };
        let (host, port) = split_port(rest);
        let port = port.map(|p| p.strip_suffix('/').unwrap_or(p));
        if port.is_some_and(|p| p.contains('/')) {
            return Err(format!(
                "{entry:?} has a path but is not allowed to\n{LEARN_MORE}"
            ));
        }
        let host = HostMatch::parse(host)?;
        let port = match port {
            None => {
                let known = scheme.as_deref().and_then(well_known_port);
                match known {
                    Some(p) => PortMatch::Range(p, u32::from(p) + 1),
                    None => {
                        return Err(format!(
                            "no port was provided and the scheme {:?} does not have a known default port number (give one, or `:*`)",
                            scheme.as_deref().unwrap_or("*")
                        ));
                    }
                }
            }
            Some(p) => PortMatch::parse(p)?,
        };
        Ok(HostPattern { scheme, host, port })
    }

    fn matches(&self, scheme: &str, host: &Target, port: Option<u16>) -> bool {
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let port_ok = match (self.port, port) {
            (PortMatch::Any, _) => true,
            (PortMatch::Range(start, end), Some(p)) => p >= start && u32::from(p) < end,
            (PortMatch::Range(..), None) => false,
        };
        let host_ok = match (&self.host, host) {
            (HostMatch::Any, _) => true,
            (HostMatch::Name(name), Target::Name(h)) => name == h,
            (HostMatch::Subdomains(suffix), Target::Name(h)) => {
                h.len() > suffix.len() && h.ends_with(suffix.as_str())
            }
            (HostMatch::Network(net), Target::Ip(ip)) => net.contains(ip),
            _ => false,
        };
        scheme_ok && port_ok && host_ok
    }
}

/// `host[:port]`, with `[ipv6]` brackets.
fn split_port(rest: &str) -> (&str, Option<&str>) {
    if let Some(inner) = rest.strip_prefix('[')
        && let Some((host, after)) = inner.split_once(']')
    {
        return (host, after.strip_prefix(':'));
    }
    // A bare IPv6 address or network (`ff00::/8`) has no port.
    if rest.matches(':').count() > 1 {
        return (rest, None);
    }
    match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    }
}

impl HostMatch {
    fn parse(host: &str) -> Result<HostMatch, String> {
        if host == "*" {
            return Ok(HostMatch::Any);
        }
        if host == "self" || host == "self.alt" {
            return Ok(HostMatch::OwnApp);
        }
        if host.starts_with('{') {
            return Err("host lists are not yet supported".into());
        }
        if let Ok(net) = host.parse::<IpNet>() {
            return Ok(HostMatch::Network(net));
        }
        let host = host.strip_suffix('/').unwrap_or(host);
        if host.contains('/') {
            return Err(format!("{host:?} must not include a path\n{LEARN_MORE}"));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(HostMatch::Network(IpNet::from(ip)));
        }
        let (suffix, name) = match host.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, host),
        };
        if name.is_empty() || name.contains('*') {
            return Err(format!(
                "{host:?} is not a host: `*` stands only for the whole host or as its first label (`*.example.com`)\n{LEARN_MORE}"
            ));
        }
        let name = match url::Host::parse(name) {
            Ok(url::Host::Domain(d)) => d,
            Ok(_) | Err(_) => return Err(format!("{host:?} is not a valid host name")),
        };
        Ok(if suffix {
            HostMatch::Subdomains(format!(".{name}"))
        } else {
            HostMatch::Name(name)
        })
    }
}

impl PortMatch {
    fn parse(port: &str) -> Result<PortMatch, String> {
        let number = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("port {p:?} is not a number from 0 to 65535"))
        };
        if port == "*" {
            return Ok(PortMatch::Any);
        }
        if port.starts_with('{') {
            return Err("port lists are not yet supported".into());
        }
        if let Some((start, end)) = port.split_once("..") {
            let (start, end) = (number(start)?, number(end)?);
            if start >= end {
                return Err(format!(
                    "port range {port:?} is empty (`a..b` means a up to, not including, b)"
                ));
            }
            return Ok(PortMatch::Range(start, u32::from(end)));
        }
        let p = number(port)?;
        Ok(PortMatch::Range(p, u32::from(p) + 1))
    }
}

impl fmt::Display for AllowedHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.patterns.is_empty() {
            return f.write_str("none");
        }
        for (i, p) in self.patterns.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(p.scheme.as_deref().unwrap_or("*"))?;
            f.write_str("://")?;
            match &p.host {
                HostMatch::Any => f.write_str("*")?,
                HostMatch::Name(n) => f.write_str(n)?,
                HostMatch::Subdomains(s) => write!(f, "*{s}")?,
                HostMatch::Network(n) if n.prefix_len() == n.max_prefix_len() => match n.addr() {
                    IpAddr::V6(a) => write!(f, "[{a}]")?,
                    a => write!(f, "{a}")?,
                },
                HostMatch::Network(n) => write!(f, "{n}")?,
                HostMatch::OwnApp => f.write_str("self")?,
            }
            match p.port {
                PortMatch::Any => f.write_str(":*")?,
                PortMatch::Range(s, e) if u32::from(s) + 1 == e => write!(f, ":{s}")?,
                PortMatch::Range(s, e) => write!(f, ":{s}..{e}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(entries).unwrap()
    }

    #[test]
    fn schemes_hosts_and_ports_match_as_in_spin() {
        let h = hosts(&["https://api.example.com", "http://localhost:8080"]);
        assert!(h.allows("https", "api.example.com", None));
        assert!(h.allows("https", "API.example.com", Some(443)));
        assert!(!h.allows("http", "api.example.com", None), "scheme");
        assert!(!h.allows("https", "api.example.com", Some(8443)), "port");
        assert!(h.allows("http", "localhost", Some(8080)));
        assert!(!h.allows("http", "localhost", None), "80 is not 8080");

        let h = hosts(&["*://*.example.com:*"]);
        assert!(h.allows("http", "a.example.com", Some(1)));
        assert!(h.allows("https", "a.b.example.com", None));
        assert!(!h.allows("https", "example.com", None));
        assert!(!h.allows("https", "myexample.com", None));

        let h = hosts(&["http://127.0.0.0/8:3000..3002", "https://[::1]:*"]);
        assert!(h.allows("http", "127.1.2.3", Some(3001)));
        assert!(!h.allows("http", "127.1.2.3", Some(3002)), "half-open");
        assert!(
            !h.allows("http", "localhost", Some(3000)),
            "names are not IPs"
        );
        assert!(h.allows("https", "[::1]", Some(9)));

        let all = hosts(&["*://*:*"]);
        assert!(all.allows("http", "anything", Some(1)) && all.allows("https", "1.2.3.4", None));
        assert!(!AllowedHosts::default().allows("https", "example.com", None));
        assert!(!hosts(&["http://self"]).allows("http", "self", None));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (entry, says) in [
            ("example.com", "does not contain a scheme"),
            ("*", "'*://*:*'"),
            ("insecure:allow-all", "use '*://*:*'"),
            ("{http,https}://x", "scheme lists"),
            ("ht-tp://x:1", "letters"),
            ("http://x/path", "must not include a path"),
            ("http://x:80/path", "has a path"),
            ("http://{a,b}", "host lists"),
            ("http://a.*.com", "first label"),
            ("http://*.", "first label"),
            ("http://exa mple.com", "not a valid host"),
            ("tcp://example.com", "no port was provided"),
            ("*://example.com", "no port was provided"),
            ("http://x:http", "not a number"),
            ("http://x:70000", "not a number"),
            ("http://x:9..9", "empty"),
            ("http://x:{1,2}", "port lists"),
        ] {
            let err = AllowedHosts::parse(&["https://fine.example.com", entry]).unwrap_err();
            assert_eq!(err.0, 1);
            assert!(err.1.contains(says), "{entry}: {}", err.1);
        }
    }

    #[test]
    fn entries_print_in_their_own_syntax() {
        let h = hosts(&[
            "https://a.example",
            "*://*.b.example:*",
            "http://10.0.0.0/8:1..5",
        ]);
        assert_eq!(
            h.to_string(),
            "https://a.example:443, *://*.b.example:*, http://10.0.0.0/8:1..5"
        );
    }
}

//! Database URLs: which dialect a URL speaks, and a form safe to log.

use std::fmt;

use super::Dialect;

/// A validated sqlx database URL (`mysql://`, `postgres://`, `sqlite://`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DbUrl {
    raw: String,
    dialect: Dialect,
}

/// Why a database URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbUrlError {
    #[error("database URL is empty")]
    Empty,
    #[error(
        "unknown database URL scheme {0:?} (expected mysql://, mariadb://, postgres://, postgresql:// or sqlite:)"
    )]
    Scheme(String),
    #[error("database URL is malformed: {0}")]
    Malformed(String),
}

impl DbUrl {
    /// Parses `raw` and works out its dialect.
    pub fn parse(raw: &str) -> Result<Self, DbUrlError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(DbUrlError::Empty);
        }
        let scheme = raw
            .split_once(':')
            .map(|(s, _)| s.to_ascii_lowercase())
            .ok_or_else(|| DbUrlError::Malformed("no scheme".into()))?;
        let dialect = match scheme.as_str() {
            "mysql" | "mariadb" => Dialect::MySql,
            "postgres" | "postgresql" => Dialect::Postgres,
            "sqlite" => Dialect::Sqlite,
            _ => return Err(DbUrlError::Scheme(scheme)),
        };
        let raw = if scheme == "mariadb" {
            format!("mysql{}", &raw["mariadb".len()..])
        } else {
            raw.to_string()
        };
        if dialect != Dialect::Sqlite {
            let u = url::Url::parse(&raw).map_err(|e| DbUrlError::Malformed(e.to_string()))?;
            if u.host_str().is_none_or(str::is_empty) {
                return Err(DbUrlError::Malformed("no host".into()));
            }
        }
        Ok(Self { raw, dialect })
    }

    /// The dialect this URL speaks.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Host and port of a networked server (default ports filled in); None
    /// for SQLite and for servers reached over a Unix socket.
    pub fn tcp_endpoint(&self) -> Option<(String, u16)> {
        let default_port = match self.dialect {
            Dialect::MySql => 3306,
            Dialect::Postgres => 5432,
            Dialect::Sqlite => return None,
        };
        let u = url::Url::parse(&self.raw).ok()?;
        let over_socket = u
            .query_pairs()
            .any(|(k, v)| k == "socket" || (k == "host" && v.starts_with('/')));
        if over_socket {
            return None;
        }
        let host = u.host_str()?.trim_start_matches('[').trim_end_matches(']');
        Some((host.to_string(), u.port().unwrap_or(default_port)))
    }

    /// The URL with its password, for connecting only; never log it.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The URL with any password replaced by `***`, safe for logs and APIs.
    pub fn redacted(&self) -> String {
        redact(&self.raw)
    }
}

/// Replaces the password of a URL-shaped string with `***`: the one
/// implementation, shared with the settings engine.
pub use svc_base::settings::redact;

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show_in_display_or_debug() {
        let u = DbUrl::parse("mysql://locsvc:s3cret@10.0.0.1:3306/loc").unwrap();
        assert_eq!(u.dialect(), Dialect::MySql);
        assert!(!format!("{u} {u:?}").contains("s3cret"));
        assert_eq!(u.redacted(), "mysql://locsvc:***@10.0.0.1:3306/loc");
        assert!(u.expose().contains("s3cret"));
    }

    #[test]
    fn tcp_endpoints_fill_in_default_ports_and_skip_sockets() {
        let ep = |u: &str| DbUrl::parse(u).unwrap().tcp_endpoint();
        assert_eq!(ep("mysql://a:b@db1/x"), Some(("db1".into(), 3306)));
        assert_eq!(ep("postgres://h:6432/x"), Some(("h".into(), 6432)));
        assert_eq!(ep("postgres://[::1]/x"), Some(("::1".into(), 5432)));
        assert_eq!(ep("mysql://u@localhost/x?socket=/run/m.sock"), None);
        assert_eq!(ep("postgres://u@h/x?host=/run/postgresql"), None);
        assert_eq!(ep("sqlite:///tmp/x.db"), None);
    }

    #[test]
    fn each_scheme_maps_to_its_dialect() {
        assert_eq!(
            DbUrl::parse("mariadb://a@h/db").unwrap().dialect(),
            Dialect::MySql
        );
        assert_eq!(
            DbUrl::parse("mariadb://a@h/db").unwrap().expose(),
            "mysql://a@h/db"
        );
        assert_eq!(
            DbUrl::parse("postgresql://h/db").unwrap().dialect(),
            Dialect::Postgres
        );
        assert_eq!(
            DbUrl::parse("sqlite:///tmp/x.db").unwrap().dialect(),
            Dialect::Sqlite
        );
        assert_eq!(
            DbUrl::parse("sqlite::memory:").unwrap().dialect(),
            Dialect::Sqlite
        );
    }

    #[test]
    fn unknown_schemes_and_garbage_are_refused() {
        assert_eq!(
            DbUrl::parse("oracle://h/x"),
            Err(DbUrlError::Scheme("oracle".into()))
        );
        assert_eq!(DbUrl::parse(""), Err(DbUrlError::Empty));
        assert!(DbUrl::parse("no-scheme-here").is_err());
        assert!(DbUrl::parse("mysql://").is_err());
    }
}

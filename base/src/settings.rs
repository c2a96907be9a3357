//! Layered settings: the one convention both binaries follow for keys,
//! environment names, values and problems. A binary owns its keys, their
//! parsing and its cross-setting rules; this module owns everything else.
//!
//! # The convention
//!
//! - **Layers**, lowest first: built-in defaults, a TOML file, environment
//!   variables, command-line flags. A higher layer replaces a key's whole
//!   value (a list is not merged with a lower layer's list).
//! - **Keys** are `snake_case`; a TOML table nests them and the key is then
//!   written with dots: `[grpc] listen = "…"` is `grpc.listen`. A binary
//!   with only top-level keys (proxy-shim) simply has no dots.
//! - **Environment names** are the binary's prefix (`LOCSVC_`,
//!   `PROXY_SHIM_`) followed by the key upper-cased, each `.` written as
//!   `__`: `grpc.listen` is `LOCSVC_GRPC__LISTEN`, `master_url` is
//!   `LOCSVC_MASTER_URL`, `rate_limit` is `PROXY_SHIM_RATE_LIMIT`. Every
//!   variable with the prefix must name a setting, except the few a binary
//!   declares as its own flags (`LOCSVC_CONFIG`, `PROXY_SHIM_CONFIG`, the
//!   client commands' `LOCSVC_TOKEN`, …).
//! - **Values** are trimmed; an empty value unsets an optional setting. A
//!   **list** is a TOML array or a comma-separated string (the only list
//!   syntax of the environment: `PROXY_SHIM_DOMAINS=a.example,b.example`);
//!   a repeatable flag gives a list too. A setting that takes one value
//!   refuses a list of several; a comma in it is part of the value.
//! - **Problems**: every unknown key and every bad value of every layer is
//!   reported at once, each naming its key, its layer and why. Values of
//!   keys that name a token, secret or password are shown as `***`, and
//!   passwords inside URLs are masked.

use std::collections::BTreeMap;
use std::path::Path;

/// The value one layer gave a key: a single string or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A TOML scalar, an environment variable, or a flag given once.
    One(String),
    /// A TOML array or a repeated flag.
    List(Vec<String>),
}

impl Value {
    /// The single value of a setting that takes one (trimmed; an empty list
    /// reads as empty, i.e. unset).
    pub fn one(&self) -> Result<&str, Refusal> {
        match self {
            Self::One(v) => Ok(v.trim()),
            Self::List(items) => match items.as_slice() {
                [] => Ok(""),
                [v] => Ok(v.trim()),
                _ => Err(Refusal::Invalid("takes one value, not a list".into())),
            },
        }
    }

    /// The items of a list setting: a string is split on commas; items are
    /// trimmed and empty ones dropped.
    pub fn list(&self) -> Vec<String> {
        let items: Vec<&str> = match self {
            Self::One(v) => v.split(',').collect(),
            Self::List(items) => items.iter().map(String::as_str).collect(),
        };
        items
            .into_iter()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The value as error messages show it, secrets hidden.
    fn shown(&self, key: &str) -> String {
        if is_secret_key(key) {
            return "***".into();
        }
        match self {
            Self::One(v) => format!("{:?}", redact(v.trim())),
            Self::List(items) => {
                format!("{:?}", items.iter().map(|v| redact(v)).collect::<Vec<_>>())
            }
        }
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::One(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::One(v.to_string())
    }
}

impl From<Vec<String>> for Value {
    fn from(items: Vec<String>) -> Self {
        Self::List(items)
    }
}

/// Why a binary refused one key's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such setting (a typo, or a variable that only shares the prefix).
    #[error("unknown setting")]
    Unknown,
    /// The value does not parse or is out of range; the text says why.
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for Refusal {
    fn from(why: String) -> Self {
        Self::Invalid(why)
    }
}

impl From<&str> for Refusal {
    fn from(why: &str) -> Self {
        Self::Invalid(why.to_string())
    }
}

/// Every problem found in the configuration, each naming its setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct SettingsError(pub Vec<String>);

impl SettingsError {
    /// `Ok` when `problems` is empty, otherwise all of them as one error.
    pub fn check(problems: Vec<String>) -> Result<(), Self> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Self(problems))
        }
    }
}

/// One key's value and the layer it came from.
#[derive(Debug, Clone)]
struct Layered {
    value: Value,
    source: String,
}

/// Key → value layers of one binary, later layers winning, with the
/// problems found while reading them.
#[derive(Debug, Clone)]
pub struct Layers {
    env_prefix: &'static str,
    not_settings: &'static [&'static str],
    values: BTreeMap<String, Layered>,
    problems: Vec<String>,
}

impl Layers {
    /// Empty layers of a binary whose variables start with `env_prefix`;
    /// `not_settings` are full variable names with that prefix that are
    /// read elsewhere (flags' `env`), not settings.
    pub fn new(env_prefix: &'static str, not_settings: &'static [&'static str]) -> Self {
        Self {
            env_prefix,
            not_settings,
            values: BTreeMap::new(),
            problems: Vec::new(),
        }
    }

    /// The environment variable that sets `key`.
    pub fn env_name(&self, key: &str) -> String {
        format!(
            "{}{}",
            self.env_prefix,
            key.replace('.', "__").to_ascii_uppercase()
        )
    }

    /// Stacks the layers above the defaults in their order: `file` (when
    /// given), then `vars` (the environment), then `flags`.
    pub fn stack<K: AsRef<str>, V: Into<Value>>(
        &mut self,
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
        flags: impl IntoIterator<Item = (K, V)>,
    ) {
        if let Some(path) = file {
            self.file(path);
        }
        self.env(vars);
        for (key, value) in flags {
            self.set(key.as_ref(), value, "command line");
        }
    }

    /// Adds the settings of the TOML file at `path`.
    pub fn file(&mut self, path: &Path) {
        // Read once at start-up, before any task runs: nothing to block.
        match std::fs::read_to_string(path) {
            Ok(text) => self.toml(&text, &path.display().to_string()),
            Err(e) => self
                .problems
                .push(format!("config file {}: {e}", path.display())),
        }
    }

    /// Adds the settings of a TOML document; `source` names it in errors.
    pub fn toml(&mut self, text: &str, source: &str) {
        match text.parse::<toml::Table>() {
            Ok(table) => self.flatten("", &table, source),
            Err(e) => self.problems.push(format!("{source}: not valid TOML: {e}")),
        }
    }

    fn flatten(&mut self, prefix: &str, table: &toml::Table, source: &str) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let value = match v {
                toml::Value::Table(inner) => {
                    self.flatten(&key, inner, source);
                    continue;
                }
                toml::Value::Array(items) => items
                    .iter()
                    .map(scalar)
                    .collect::<Option<_>>()
                    .map(Value::List),
                other => scalar(other).map(Value::One),
            };
            match value {
                Some(value) => self.set(&key, value, source),
                None => {
                    let shown = if is_secret_key(&key) {
                        "***".to_string()
                    } else {
                        redact(&v.to_string())
                    };
                    self.problems.push(format!(
                        "`{key}` ({source}): unsupported value {shown} (expected a string, number, boolean or a list of them)"
                    ));
                }
            }
        }
    }

    /// Adds the variables of `vars` that carry the prefix.
    pub fn env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (name, value) in vars {
            if self.not_settings.contains(&name.as_str()) {
                continue;
            }
            if let Some(rest) = name.strip_prefix(self.env_prefix) {
                let key = rest.to_ascii_lowercase().replace("__", ".");
                self.set(&key, value, &format!("env {name}"));
            }
        }
    }

    /// Sets one key, replacing what a lower layer gave it.
    pub fn set(&mut self, key: &str, value: impl Into<Value>, source: &str) {
        self.values.insert(
            key.to_string(),
            Layered {
                value: value.into(),
                source: source.to_string(),
            },
        );
    }

    /// Hands every key to `apply`, in key order, and returns every problem:
    /// those found reading the layers, then one per refused key.
    pub fn resolve(
        self,
        mut apply: impl FnMut(&str, &Value) -> Result<(), Refusal>,
    ) -> Vec<String> {
        let mut problems = self.problems;
        for (key, Layered { value, source }) in &self.values {
            if let Err(why) = apply(key, value) {
                problems.push(format!("`{key}` = {} ({source}): {why}", value.shown(key)));
            }
        }
        problems
    }
}

/// A TOML scalar as a string; None for a table, array or datetime.
fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether `key`'s values are secrets that no message may show.
fn is_secret_key(key: &str) -> bool {
    ["token", "secret", "password"]
        .iter()
        .any(|word| key.contains(word))
}

/// One documented setting: dotted key, default as a TOML literal, and what
/// it does (a binary's `config defaults`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Documented {
    pub key: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// A [`Documented`] setting, for tables of them.
pub const fn documented(
    key: &'static str,
    default: &'static str,
    help: &'static str,
) -> Documented {
    Documented { key, default, help }
}

/// `settings` as a TOML file of their defaults under `header` (comment
/// lines), a section per key prefix, each key followed by its help.
pub fn defaults_toml(header: &str, settings: &[Documented]) -> String {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str(&format!("# {line}\n"));
    }
    let mut section = "";
    for s in settings {
        let (sec, name) = s.key.rsplit_once('.').unwrap_or(("", s.key));
        if sec != section {
            out.push_str(&format!("\n[{sec}]\n"));
            section = sec;
        }
        out.push_str(&format!("{name} = {}  # {}\n", s.default, s.help));
    }
    out
}

/// The keys of `settings` the binary does not know: `try_key` resolves a
/// layer setting only that key (to any value) and returns the error text.
/// Empty when a `config defaults` table matches the code.
pub fn unknown_keys(
    settings: &[Documented],
    try_key: impl Fn(&str) -> String,
) -> Vec<&'static str> {
    settings
        .iter()
        .filter(|s| try_key(s.key).contains("unknown setting"))
        .map(|s| s.key)
        .collect()
}

/// `raw` with the password of a URL (`scheme://user:password@host`)
/// replaced by `***`; anything else unchanged.
pub fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => raw.to_string(),
        // Unparsable: where the user name ends is a guess, so hide everything
        // between "://" and the last '@' (a password may hold an unescaped
        // '@'; one in the path or query hides more, the safe direction).
        Err(_) => match (raw.find("://"), raw.rfind('@')) {
            (Some(s), Some(at)) if at > s + 3 => format!("{}***{}", &raw[..s + 3], &raw[at..]),
            _ => raw.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> Layers {
        Layers::new("APP_", &["APP_CONFIG"])
    }

    /// Every key as the last layer left it, or every problem.
    fn resolved(l: Layers) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        let problems = l.resolve(|k, v| {
            out.insert(k.to_string(), v.clone());
            Ok(())
        });
        assert!(problems.is_empty(), "{problems:?}");
        out
    }

    #[test]
    fn file_then_env_then_flags_win_in_that_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.toml");
        std::fs::write(
            &path,
            "name = \"file\"\n[grpc]\nlisten = \"file\"\nport = 1\n",
        )
        .unwrap();
        let mut l = layers();
        l.stack(
            Some(&path),
            [
                ("APP_GRPC__LISTEN".to_string(), "env".to_string()),
                ("APP_NAME".into(), "env".into()),
                ("OTHER".into(), "ignored".into()),
                ("APP_CONFIG".into(), "a flag's, not a setting".into()),
            ],
            [("name", "flag")],
        );
        let v = resolved(l);
        assert_eq!(v["name"], Value::One("flag".into()));
        assert_eq!(v["grpc.listen"], Value::One("env".into()));
        assert_eq!(v["grpc.port"], Value::One("1".into()));
        assert_eq!(v.len(), 3, "{v:?}");
    }

    #[test]
    fn env_names_are_the_prefix_and_the_key_upper_cased_with_dots_as_double_underscores() {
        let l = layers();
        assert_eq!(l.env_name("grpc.listen"), "APP_GRPC__LISTEN");
        assert_eq!(l.env_name("rate_limit"), "APP_RATE_LIMIT");
        let mut l = layers();
        l.env([
            ("APP_GRPC__LISTEN".to_string(), "a".to_string()),
            ("APP_RATE_LIMIT".into(), "b".into()),
        ]);
        let keys: Vec<String> = resolved(l).into_keys().collect();
        assert_eq!(keys, ["grpc.listen", "rate_limit"]);
    }

    #[test]
    fn lists_are_toml_arrays_or_comma_separated_strings() {
        let mut l = layers();
        l.toml("a = [\"x\", \" y \", \"\", 3]\nb = \"x, y,,\"", "f.toml");
        l.env([("APP_C".to_string(), " x ,y ".to_string())]);
        l.set("d", vec!["x,y".to_string()], "command line");
        let v = resolved(l);
        for key in ["a", "b", "c"] {
            assert_eq!(v[key].list()[..2], ["x", "y"], "{key}");
        }
        assert_eq!(v["a"].list(), ["x", "y", "3"]);
        // A flag's item is taken whole: the shell already split the list.
        assert_eq!(v["d"].list(), ["x,y"]);
    }

    #[test]
    fn a_single_value_is_trimmed_and_keeps_its_commas() {
        assert_eq!(Value::from(" info,sqlx=warn ").one(), Ok("info,sqlx=warn"));
        assert_eq!(Value::from(vec![" x ".to_string()]).one(), Ok("x"));
        assert_eq!(Value::List(Vec::new()).one(), Ok(""));
        assert!(
            Value::from(vec!["x".to_string(), "y".into()])
                .one()
                .is_err()
        );
    }

    #[test]
    fn every_problem_of_every_layer_is_reported_at_once_with_key_and_source() {
        let mut l = layers();
        l.toml("when = 1979-05-27\n[t]\nbad = [[1]]\nok = 1", "f.toml");
        l.toml("not toml", "g.toml");
        l.file(Path::new("/nonexistent/app.toml"));
        l.env([("APP_BOGUS".to_string(), "1".to_string())]);
        l.set("ok", "x", "command line");
        let problems = l.resolve(|k, _| match k {
            "bogus" => Err(Refusal::Unknown),
            "t.ok" => Err("must be 2".into()),
            _ => Ok(()),
        });
        let text = problems.join("\n");
        assert_eq!(problems.len(), 6, "{text}");
        for part in [
            "`when` (f.toml): unsupported value",
            "`t.bad` (f.toml): unsupported value",
            "g.toml: not valid TOML",
            "config file /nonexistent/app.toml",
            "`bogus` = \"1\" (env APP_BOGUS): unknown setting",
            "`t.ok` = \"1\" (f.toml): must be 2",
        ] {
            assert!(text.contains(part), "{part} missing from:\n{text}");
        }
    }

    #[test]
    fn secrets_never_show_in_problems() {
        let mut l = layers();
        for key in ["grpc.token", "auth_secret", "db.password"] {
            l.set(key, "hunter2", "t");
        }
        l.set("master_url", "mysql://u:hunter2@h/db", "t");
        l.set("urls", vec!["http://u:hunter2@h".to_string()], "t");
        let problems = l.resolve(|_, _| Err("bad".into()));
        let text = problems.join("\n");
        assert_eq!(problems.len(), 5, "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("mysql://u:***@h/db"), "{text}");
    }

    #[test]
    fn secrets_never_show_in_unsupported_toml_values() {
        let mut l = layers();
        l.toml(
            "auth_token = [[\"hunter2\"]]\nurls = [[\"mysql://u:hunter2@h/db\"]]\n\
             [db]\npassword = [{ a = \"hunter2\" }]\n",
            "f.toml",
        );
        let problems = l.resolve(|_, _| Ok(()));
        let text = problems.join("\n");
        assert_eq!(problems.len(), 3, "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("`auth_token` (f.toml): unsupported value ***"),
            "{text}"
        );
        assert!(
            text.contains("`db.password` (f.toml): unsupported value ***"),
            "{text}"
        );
        assert!(
            text.contains(r#"unsupported value [["mysql://***@h/db"]]"#),
            "{text}"
        );
    }

    #[test]
    fn redact_masks_only_url_passwords() {
        assert_eq!(redact("mysql://u:pw@h:3306/db"), "mysql://u:***@h:3306/db");
        assert_eq!(redact("mysql://u:p@w@h/db"), "mysql://u:***@h/db");
        assert_eq!(redact("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        assert_eq!(redact("127.0.0.1:5060"), "127.0.0.1:5060");
    }

    #[test]
    fn unparsable_urls_are_still_redacted() {
        assert_eq!(redact("mysql://u:p w@h/x"), "mysql://u:***@h/x");
        assert_eq!(redact("mysql://u:pw@[bad/x"), "mysql://***@[bad/x");
    }
}

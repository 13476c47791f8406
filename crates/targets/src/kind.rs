//! What the command line and the state files know about a kind of target or filter: its name,
//! one line about it, its options, and how to build it from them.
//!
//! A target declares itself by implementing [`TargetKind`] (a filter: [`FilterKind`]) next to
//! its data path, in its own file. Its options are plain data ([`Opt`]); the CLI turns what the
//! user typed into a JSON object with one key per option (`--inline-io on` -> `"inline_io":"on"`),
//! which `serde` turns into the kind's `Config`. The same JSON is what a device's state file
//! keeps, so a recovering daemon reopens exactly what the user asked for.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::size::parse_size;
use crate::{Filter, OpenError, Target};

/// The type of an option's value, which says how the CLI parses it and how it looks in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// A switch (`--buffered`): `true` when given.
    Flag,
    /// Bytes with an optional K/M/G/T suffix: a JSON number.
    Size,
    /// A whole number: a JSON number.
    Count,
    /// A decimal number (`0.25`): a JSON number.
    Decimal,
    /// A file system path, made absolute (daemons do not share our working directory).
    Path,
    /// Any text.
    Text,
    /// One of these words.
    Choice(&'static [&'static str]),
}

/// One option of a target (`--name VALUE`) or a filter parameter (`name=VALUE`).
#[derive(Debug, Clone, Copy)]
pub struct Opt {
    /// Kebab-case as typed; the JSON key is the same with `_` for `-`.
    pub name: &'static str,
    pub short: Option<char>,
    pub value: Value,
    /// Placeholder in help (`FILE`, `SIZE`).
    pub placeholder: &'static str,
    pub help: &'static str,
    pub required: bool,
}

impl Opt {
    /// An optional option.
    pub const fn new(
        name: &'static str,
        value: Value,
        placeholder: &'static str,
        help: &'static str,
    ) -> Opt {
        Opt {
            name,
            short: None,
            value,
            placeholder,
            help,
            required: false,
        }
    }
    /// A switch.
    pub const fn flag(name: &'static str, help: &'static str) -> Opt {
        Opt::new(name, Value::Flag, "", help)
    }
    pub const fn required(mut self) -> Opt {
        self.required = true;
        self
    }
    pub const fn short(mut self, c: char) -> Opt {
        self.short = Some(c);
        self
    }

    /// The key of this option in a config object.
    pub fn key(&self) -> String {
        self.name.replace('-', "_")
    }

    /// Parse what the user typed for this option into its JSON value. Errors are one line
    /// (without the option's name: callers say where the value came from).
    pub fn parse(&self, raw: &str) -> Result<serde_json::Value, String> {
        use serde_json::Value as J;
        Ok(match self.value {
            Value::Flag => match raw {
                "" | "true" | "on" | "yes" | "1" => J::Bool(true),
                "false" | "off" | "no" | "0" => J::Bool(false),
                _ => return Err(format!("'{raw}' is not on or off")),
            },
            Value::Size => J::from(parse_size(raw)?),
            Value::Count => J::from(
                raw.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("'{raw}' is not a whole number"))?,
            ),
            Value::Decimal => {
                let f: f64 = raw
                    .trim()
                    .parse()
                    .ok()
                    .filter(|f: &f64| f.is_finite())
                    .ok_or_else(|| format!("'{raw}' is not a number"))?;
                serde_json::Number::from_f64(f)
                    .map(J::Number)
                    .ok_or("not a number")?
            }
            Value::Path => {
                if raw.is_empty() {
                    return Err("empty path".into());
                }
                let p = std::path::absolute(raw).map_err(|e| format!("{raw}: {e}"))?;
                J::String(p.to_string_lossy().into_owned())
            }
            Value::Text => J::String(raw.to_string()),
            Value::Choice(words) => {
                if !words.contains(&raw) {
                    return Err(format!("'{raw}' is not one of {}", words.join(", ")));
                }
                J::String(raw.to_string())
            }
        })
    }
}

/// A kind of target or filter, as the CLI lists it.
#[derive(Debug, Clone, Copy)]
pub struct Info {
    /// `-t NAME` / `--filter NAME:...`.
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    pub opts: &'static [Opt],
}

impl Info {
    pub fn opt(&self, name: &str) -> Option<&'static Opt> {
        self.opts.iter().find(|o| o.name == name)
    }
}

/// A target the CLI can create. Every target gets the config key `read_only` when the user
/// asks for a read-only device: a target that can open its storage read-only declares it in
/// its `Config`; any other target is wrapped in the `readonly` filter by the caller.
pub trait TargetKind: Target + Sized {
    const INFO: Info;
    /// The options, as stored in a state file.
    type Config: Serialize + DeserializeOwned;
    /// Check the options without touching anything (the command line does this before it
    /// starts a daemon). `open` checks them again.
    fn check(_cfg: &Self::Config) -> Result<(), OpenError> {
        Ok(())
    }
    /// Check the options and open the storage. Nothing is left behind on failure.
    fn open(cfg: &Self::Config) -> Result<Self, OpenError>;
    /// A short description for `list` (`file /srv/disk.img`).
    fn describe(cfg: &Self::Config) -> String {
        describe(Self::INFO.name, " ", cfg)
    }
}

/// A filter the CLI can put in front of a target (`--filter NAME:KEY=VALUE,...`).
pub trait FilterKind: Filter + Sized {
    const INFO: Info;
    type Config: Serialize + DeserializeOwned;
    /// Check the parameters and make the filter (no side effects: also how they are checked).
    fn new(cfg: &Self::Config) -> Result<Self, OpenError>;
    /// As typed on the command line (`delay:ms=5`).
    fn describe(cfg: &Self::Config) -> String {
        describe(Self::INFO.name, ":", cfg)
    }
}

/// `NAME` then `SEP` and the config's set values as `key=value`, comma-separated (switches that
/// are off and options left out are not shown).
pub fn describe(name: &str, sep: &str, cfg: &impl Serialize) -> String {
    let Ok(serde_json::Value::Object(m)) = serde_json::to_value(cfg) else {
        return name.to_string();
    };
    let parts: Vec<String> = m
        .iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::Null | serde_json::Value::Bool(false) => None,
            serde_json::Value::Bool(true) => Some(k.replace('_', "-")),
            serde_json::Value::String(s) => Some(format!("{}={s}", k.replace('_', "-"))),
            v => Some(format!("{}={v}", k.replace('_', "-"))),
        })
        .collect();
    if parts.is_empty() {
        name.to_string()
    } else {
        format!("{name}{sep}{}", parts.join(","))
    }
}

/// Turn a config object into `C`, with serde's complaint cut to one line.
pub fn config_from<C: DeserializeOwned>(
    what: &str,
    v: serde_json::Map<String, serde_json::Value>,
) -> Result<C, OpenError> {
    serde_json::from_value(serde_json::Value::Object(v))
        .map_err(|e| OpenError::Invalid(format!("{what}: {}", e.to_string().replace('\n', " "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_to_json_and_bad_ones_are_one_line() {
        let size = Opt::new("size", Value::Size, "SIZE", "");
        assert_eq!(size.parse("4K").unwrap(), serde_json::json!(4096));
        let n = Opt::new("n", Value::Count, "N", "");
        assert_eq!(n.parse("12").unwrap(), serde_json::json!(12));
        let d = Opt::new("p", Value::Decimal, "P", "");
        assert_eq!(d.parse("0.25").unwrap(), serde_json::json!(0.25));
        let c = Opt::new("mode", Value::Choice(&["a", "b"]), "M", "");
        assert_eq!(c.parse("b").unwrap(), serde_json::json!("b"));
        let p = Opt::new("path", Value::Path, "FILE", "");
        assert!(
            p.parse("rel.img")
                .unwrap()
                .as_str()
                .unwrap()
                .starts_with('/')
        );
        let f = Opt::flag("x", "");
        assert_eq!(f.parse("").unwrap(), serde_json::json!(true));
        for (o, bad) in [
            (&size, "lots"),
            (&n, "-1"),
            (&d, "nan"),
            (&c, "z"),
            (&p, ""),
            (&f, "maybe"),
        ] {
            let e = o.parse(bad).unwrap_err();
            assert!(!e.is_empty() && !e.contains('\n'), "{bad}: {e}");
        }
        assert_eq!(Opt::flag("inline-io", "").key(), "inline_io");
    }

    #[test]
    fn describe_shows_what_is_set() {
        #[derive(Serialize)]
        struct C {
            ms: Option<u64>,
            us: Option<u64>,
            on: bool,
            off: bool,
            path: String,
        }
        let c = C {
            ms: Some(5),
            us: None,
            on: true,
            off: false,
            path: "/x".into(),
        };
        assert_eq!(describe("f", ":", &c), "f:ms=5,on,path=/x");
        #[derive(Serialize)]
        struct E {}
        assert_eq!(describe("null", " ", &E {}), "null");
    }
}

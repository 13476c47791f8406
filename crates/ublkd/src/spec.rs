//! What a target is, as data: parsed from the command line, stored in a device's state file, and
//! opened again by a recovering daemon. A kind name and its config object (one key per option,
//! see `targets::kind`), plus the filters in front of it.
//!
//! JSON form: `{"type":"file","path":"/x.img",...}`; with filters
//! `{"type":"filtered","filters":[{"type":"delay","ms":5}],"inner":{"type":"null",...}}`, the form
//! state files have always had, so a new daemon recovers a device an older one created.

use serde_json::{Map, Value};
pub use targets::OpenError;
use targets::kind::Opt;

use crate::registry::{AnyFilter, AnyTarget, filter_info, unknown};

/// A target and the filters in front of it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct TargetSpec {
    pub kind: String,
    pub config: Map<String, Value>,
    /// Applied in order: the first wraps the target, the last is what the frontend sees.
    pub filters: Vec<FilterSpec>,
}

/// A filter, as data: `{"type":"delay","ms":5}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct FilterSpec {
    pub kind: String,
    pub config: Map<String, Value>,
}

/// The config key every target receives when the device is read-only (see `TargetKind`).
const READ_ONLY: &str = "read_only";

/// `{"type": kind, ...config}`.
fn tagged(kind: String, mut config: Map<String, Value>) -> Value {
    config.insert("type".into(), Value::String(kind));
    Value::Object(config)
}

/// Split `{"type": kind, ...config}`.
fn untag(v: Value) -> Result<(String, Map<String, Value>), String> {
    let Value::Object(mut m) = v else {
        return Err("expected an object".into());
    };
    match m.remove("type") {
        Some(Value::String(k)) => Ok((k, m)),
        _ => Err("no \"type\"".into()),
    }
}

impl From<FilterSpec> for Value {
    fn from(f: FilterSpec) -> Value {
        tagged(f.kind, f.config)
    }
}

impl TryFrom<Value> for FilterSpec {
    type Error = String;
    fn try_from(v: Value) -> Result<FilterSpec, String> {
        let (kind, config) = untag(v)?;
        Ok(FilterSpec { kind, config })
    }
}

impl From<TargetSpec> for Value {
    fn from(s: TargetSpec) -> Value {
        let inner = tagged(s.kind, s.config);
        if s.filters.is_empty() {
            return inner;
        }
        let mut m = Map::new();
        m.insert("type".into(), "filtered".into());
        m.insert(
            "filters".into(),
            Value::Array(s.filters.into_iter().map(Value::from).collect()),
        );
        m.insert("inner".into(), inner);
        Value::Object(m)
    }
}

impl TryFrom<Value> for TargetSpec {
    type Error = String;
    fn try_from(v: Value) -> Result<TargetSpec, String> {
        let (kind, mut config) = untag(v)?;
        if kind != "filtered" {
            return Ok(TargetSpec {
                kind,
                config,
                filters: Vec::new(),
            });
        }
        let inner = config
            .remove("inner")
            .ok_or("filtered target without \"inner\"")?;
        let mut spec = TargetSpec::try_from(inner)?;
        let outer: Vec<FilterSpec> = match config.remove("filters") {
            Some(f) => serde_json::from_value(f).map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        spec.filters.extend(outer);
        Ok(spec)
    }
}

impl FilterSpec {
    /// Parse `NAME` or `NAME:KEY=VALUE,KEY=VALUE` (`delay:ms=5`). Errors are one line.
    pub fn parse(s: &str) -> Result<FilterSpec, String> {
        let (name, params) = s.split_once(':').unwrap_or((s, ""));
        let info = filter_info(name)
            .ok_or_else(|| unknown("filter", name, crate::registry::FILTERS).to_string())?;
        let mut config = Map::new();
        for p in params.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let opt: &Opt = info.opt(k.trim()).ok_or_else(|| {
                let known: Vec<&str> = info.opts.iter().map(|o| o.name).collect();
                format!(
                    "filter {name} has no parameter '{k}' (it takes: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            })?;
            let v = opt
                .parse(v.trim())
                .map_err(|e| format!("filter {name}: {k}: {e}"))?;
            config.insert(opt.key(), v);
        }
        let f = FilterSpec {
            kind: name.to_string(),
            config,
        };
        f.describe_checked().map_err(|e| e.to_string())?;
        Ok(f)
    }

    /// As typed on the command line; checks the config on the way.
    fn describe_checked(&self) -> Result<String, OpenError> {
        AnyFilter::describe_kind(&self.kind, self.config.clone())
    }

    pub fn describe(&self) -> String {
        self.describe_checked()
            .unwrap_or_else(|_| self.kind.clone())
    }
}

impl TargetSpec {
    /// Whether the device is read-only whatever the target could do.
    pub fn read_only(&self) -> bool {
        self.config.get(READ_ONLY) == Some(&Value::Bool(true))
    }

    /// Make the device read-only (see `TargetKind`).
    pub fn set_read_only(&mut self) {
        self.config.insert(READ_ONLY.into(), Value::Bool(true));
    }

    /// Check the configs of the target and its filters without opening anything.
    pub fn check(&self) -> Result<(), OpenError> {
        AnyTarget::describe_kind(&self.kind, self.config.clone())?;
        for f in &self.filters {
            f.describe_checked()?;
        }
        Ok(())
    }

    /// A short human description for `list` (`file /x.img +delay:ms=5`).
    pub fn describe(&self) -> String {
        let mut d = AnyTarget::describe_kind(&self.kind, self.config.clone())
            .unwrap_or_else(|_| self.kind.clone());
        if self.read_only() {
            d.push_str(" (read-only)");
        }
        for f in &self.filters {
            d.push_str(" +");
            d.push_str(&f.describe());
        }
        d
    }

    /// Open the target, then its filters. Nothing is created on failure.
    pub fn open(&self) -> Result<AnyTarget, OpenError> {
        let mut t = AnyTarget::open_kind(&self.kind, self.config.clone())?;
        // A target that could not open its storage read-only gets a layer that refuses writes.
        if self.read_only() && !targets::Target::geometry(&t).caps.read_only {
            t = t.filtered(AnyFilter::ReadOnly(targets::filter::readonly::ReadOnly));
        }
        for f in &self.filters {
            t = t.filtered(AnyFilter::new_kind(&f.kind, f.config.clone())?);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use targets::Target;

    fn spec(v: Value) -> TargetSpec {
        serde_json::from_value(v).unwrap()
    }

    /// State files written before targets declared their options still load and open.
    #[test]
    fn old_state_files_load() {
        let f = spec(
            json!({"type":"file","path":"/x.img","size":null,"buffered":true,
            "read_only":false,"inline_io":"off"}),
        );
        assert_eq!(f.kind, "file");
        assert_eq!(f.describe(), "file /x.img (buffered) (inline-io off)");
        let f = spec(json!({"type":"file","path":"/x.img"}));
        assert_eq!(f.describe(), "file /x.img");
        let n = spec(json!({"type":"nbd","uri":"nbd://127.0.0.1:1/x","timeout_secs":7}));
        assert_eq!(n.describe(), "nbd nbd://127.0.0.1:1/x");
        // Port 1 on loopback: nobody listens there; the error is one line naming the server.
        let e = n.open().err().unwrap().to_string();
        assert!(
            e.contains("nbd://127.0.0.1:1/x") && !e.contains('\n'),
            "{e}"
        );
        let d = spec(
            json!({"type":"filtered","filters":[{"type":"delay","us":5000}],
            "inner":{"type":"null","size":1048576,"logical_block":512}}),
        );
        assert_eq!(d.kind, "null");
        assert_eq!(d.describe(), "null 1M +delay:us=5000");
        let t = d.open().unwrap();
        assert_eq!(t.geometry().size, 1 << 20);
        assert!(matches!(t, AnyTarget::Filtered(_)));
    }

    #[test]
    fn specs_round_trip_through_json() {
        let mut s = spec(json!({"type":"mem","size":4096}));
        s.filters.push(FilterSpec::parse("delay:ms=5").unwrap());
        s.filters
            .push(FilterSpec::parse("error:ops=read,offset=4K,length=4K").unwrap());
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["type"], "filtered");
        assert_eq!(j["inner"]["type"], "mem");
        assert_eq!(j["filters"][1]["offset"], 4096);
        assert_eq!(serde_json::from_value::<TargetSpec>(j).unwrap(), s);
        assert_eq!(
            s.describe(),
            "mem 4K +delay:ms=5 +error:length=4096,offset=4096,ops=read"
        );
    }

    #[test]
    fn filters_parse_and_bad_ones_are_one_line() {
        assert_eq!(
            FilterSpec::parse("delay:us=250").unwrap().config,
            json!({"us": 250}).as_object().unwrap().clone()
        );
        assert_eq!(
            FilterSpec::parse("readonly").unwrap().describe(),
            "readonly"
        );
        for (bad, want) in [
            ("delay", "needs one latency"),
            ("delay:", "needs one latency"),
            ("delay:ms=x", "not a whole number"),
            ("delay:s=1", "no parameter 's'"),
            ("delay:ms=1,us=1", "needs one latency"),
            ("slow:ms=1", "unknown filter 'slow'"),
            ("", "unknown filter"),
            ("rate", "give a limit"),
            ("rate:iops=10,bw=1Q", "invalid size"),
            ("error:rate=2", "outside 0..1"),
            ("readonly:x=1", "it takes: none"),
        ] {
            let e = FilterSpec::parse(bad).unwrap_err();
            assert!(e.contains(want) && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn read_only_wraps_targets_that_cannot_do_it_themselves() {
        let mut s = spec(json!({"type":"mem","size":1048576}));
        s.set_read_only();
        assert!(s.describe().ends_with("(read-only)"));
        let t = s.open().unwrap();
        assert!(t.geometry().caps.read_only);
        assert!(matches!(t, AnyTarget::Filtered(_)));
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(serde_json::from_value::<TargetSpec>(j).unwrap(), s);
    }

    #[test]
    fn sizes_are_checked() {
        let e = spec(json!({"type":"null","size":1000}))
            .open()
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("not a multiple of the 512-byte block size"),
            "{e}"
        );
        let e = spec(json!({"type":"mem","size":0}))
            .open()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("greater than zero"), "{e}");
        let e = spec(json!({"type":"mem","size":4096,"logical_block":1000}))
            .open()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not one of"), "{e}");
        let t = spec(json!({"type":"null","size":1u64<<40,"logical_block":4096}))
            .open()
            .unwrap();
        assert_eq!(t.geometry().size, 1 << 40);
        let e = spec(json!({"type":"null"}))
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing field `size`") && !e.contains('\n'),
            "{e}"
        );
    }
}

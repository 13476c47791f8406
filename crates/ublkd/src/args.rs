//! `-t TYPE`, the target's options, `--read-only` and `--filter`: one parser for `add` and
//! `export`, built from the registry. Each target's options are clap arguments (hidden from
//! the flat option list); `--help` lists them per target, with the filters, after the options.

use clap::builder::PossibleValuesParser;
use clap::{Arg, ArgAction, ArgMatches, Command, FromArgMatches, parser::ValueSource};
use serde_json::Map;
use targets::kind::{Info, Opt, Value};

use crate::registry::{FILTERS, TARGETS, target_info};
use crate::spec::{FilterSpec, TargetSpec};

/// What the user typed about the target.
#[derive(Debug, Clone, Default)]
pub struct TargetArgs {
    pub kind: String,
    /// Target options given on the command line, as typed (switches: "").
    pub given: Vec<(&'static str, String)>,
    pub read_only: bool,
    pub filters: Vec<String>,
}

/// Every target option once (kinds that share a name share the option: see the registry test).
fn all_opts() -> Vec<&'static Opt> {
    let mut v: Vec<&'static Opt> = Vec::new();
    for o in TARGETS.iter().flat_map(|i| i.opts) {
        if !v.iter().any(|x| x.name == o.name) {
            v.push(o);
        }
    }
    v
}

/// The clap id of a target option: its name behind a prefix, so a target's `--id` cannot
/// collide with a command's own argument called `id` (the device number).
fn arg_id(o: &Opt) -> &'static str {
    static IDS: std::sync::OnceLock<Vec<(&'static str, &'static str)>> = std::sync::OnceLock::new();
    let ids = IDS.get_or_init(|| {
        all_opts()
            .into_iter()
            .map(|o| {
                let id: &'static str = Box::leak(format!("target-opt-{}", o.name).into_boxed_str());
                (o.name, id)
            })
            .collect()
    });
    ids.iter()
        .find(|(n, _)| *n == o.name)
        .map(|(_, id)| *id)
        .expect("every target option has an id")
}

impl TargetArgs {
    /// Check combinations and build the spec, without opening anything. Errors are one line.
    pub fn to_spec(&self) -> Result<TargetSpec, String> {
        let info =
            target_info(&self.kind).ok_or_else(|| format!("unknown target '{}'", self.kind))?;
        let mut config = Map::new();
        for (name, raw) in &self.given {
            let Some(opt) = info.opt(name) else {
                let owners: Vec<String> = TARGETS
                    .iter()
                    .filter(|i| i.opt(name).is_some())
                    .map(|i| format!("-t {}", i.name))
                    .collect();
                return Err(format!("--{name} applies only to {}", owners.join(", ")));
            };
            let v = opt.parse(raw).map_err(|e| format!("--{name}: {e}"))?;
            config.insert(opt.key(), v);
        }
        if let Some(o) = info
            .opts
            .iter()
            .find(|o| o.required && !config.contains_key(&o.key()))
        {
            return Err(format!(
                "-t {} needs --{} {}",
                info.name, o.name, o.placeholder
            ));
        }
        let mut spec = TargetSpec {
            kind: info.name.to_string(),
            config,
            filters: self
                .filters
                .iter()
                .map(|f| FilterSpec::parse(f))
                .collect::<Result<_, _>>()?,
        };
        if self.read_only {
            spec.set_read_only();
        }
        spec.check().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

/// `--help` text: every target with its options, then every filter with its parameters.
fn help_text() -> String {
    fn opt_line(o: &Opt, filter: bool) -> String {
        let left = match (filter, o.value, o.short) {
            (true, Value::Flag, _) => o.name.to_string(),
            (true, _, _) => format!("{}={}", o.name, o.placeholder),
            (false, Value::Flag, _) => format!("    --{}", o.name),
            (false, _, Some(c)) => format!("-{c}, --{} {}", o.name, o.placeholder),
            (false, _, None) => format!("    --{} {}", o.name, o.placeholder),
        };
        let req = if o.required { " (required)" } else { "" };
        format!("      {left:<28} {}{req}\n", o.help)
    }
    fn section(out: &mut String, infos: &[Info], filter: bool) {
        for i in infos {
            out.push_str(&format!("  {:<8} {}\n", i.name, i.about));
            for o in i.opts {
                out.push_str(&opt_line(o, filter));
            }
        }
    }
    let mut s = String::from("Targets (-t TYPE):\n");
    section(&mut s, TARGETS, false);
    s.push_str(
        "\nFilters (--filter NAME[:KEY=VALUE,...], repeatable; the first given sits next to the target):\n",
    );
    section(&mut s, FILTERS, true);
    s
}

impl clap::Args for TargetArgs {
    fn augment_args(cmd: Command) -> Command {
        let names: Vec<&str> = TARGETS.iter().map(|i| i.name).collect();
        let mut cmd = cmd
            .arg(
                Arg::new("type")
                    .short('t')
                    .long("type")
                    .value_name("TYPE")
                    .required(true)
                    .value_parser(PossibleValuesParser::new(names))
                    .help("Target type (listed below with their options)"),
            )
            .arg(
                Arg::new("read-only")
                    .long("read-only")
                    .action(ArgAction::SetTrue)
                    .help("Refuse writes: a read-only device or export, whatever the target"),
            )
            .arg(
                Arg::new("filter")
                    .long("filter")
                    .value_name("SPEC")
                    .action(ArgAction::Append)
                    .help("Put a filter in front of the target (listed below); repeat to stack"),
            );
        for o in all_opts() {
            let mut a = Arg::new(arg_id(o)).long(o.name).hide(true);
            a = match o.value {
                Value::Flag => a.action(ArgAction::SetTrue),
                _ => a.value_name(o.placeholder).action(ArgAction::Set),
            };
            if let Some(c) = o.short {
                a = a.short(c);
            }
            cmd = cmd.arg(a);
        }
        cmd.after_help(help_text())
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for TargetArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut a = TargetArgs::default();
        a.update_from_arg_matches(m)?;
        Ok(a)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(k) = m.get_one::<String>("type") {
            self.kind = k.clone();
        }
        self.read_only = m.get_flag("read-only");
        self.filters = m
            .get_many::<String>("filter")
            .map(|v| v.cloned().collect())
            .unwrap_or_default();
        self.given.clear();
        for o in all_opts() {
            if m.value_source(arg_id(o)) != Some(ValueSource::CommandLine) {
                continue;
            }
            let raw = match o.value {
                Value::Flag => String::new(),
                _ => m.get_one::<String>(arg_id(o)).cloned().unwrap_or_default(),
            };
            self.given.push((o.name, raw));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        t: TargetArgs,
    }

    fn parse(args: &[&str]) -> Result<TargetSpec, String> {
        let mut argv = vec!["ublkd"];
        argv.extend_from_slice(args);
        let c = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        c.t.to_spec()
    }

    #[test]
    fn the_command_is_well_formed_and_help_lists_every_kind() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let h = Cli::command().render_help().to_string();
        for i in TARGETS.iter().chain(FILTERS) {
            assert!(h.contains(i.about), "help lacks {}", i.name);
            for o in i.opts {
                assert!(h.contains(o.help), "help lacks {} {}", i.name, o.name);
            }
        }
    }

    #[test]
    fn options_become_the_kinds_config() {
        let s = parse(&[
            "-t",
            "file",
            "-f",
            "rel.img",
            "--inline-io",
            "off",
            "--buffered",
        ])
        .unwrap();
        assert_eq!(s.kind, "file");
        assert!(s.config["path"].as_str().unwrap().starts_with('/'));
        assert_eq!(s.config["inline_io"], "off");
        assert_eq!(s.config["buffered"], true);
        assert!(!s.read_only());
        let s = parse(&[
            "-t",
            "mem",
            "-s",
            "1M",
            "--read-only",
            "--filter",
            "delay:ms=5",
        ])
        .unwrap();
        assert_eq!(s.config["size"], 1 << 20);
        assert!(s.read_only());
        assert_eq!(s.filters.len(), 1);
        let s = parse(&[
            "-t",
            "nbd",
            "--uri",
            "nbd://127.0.0.1:1234/disk",
            "--timeout",
            "5",
        ])
        .unwrap();
        assert_eq!(s.config["timeout"], 5);
    }

    #[test]
    fn combinations_are_checked_in_one_line() {
        for (args, want) in [
            (&["-t", "null"][..], "-t null needs --size SIZE"),
            (&["-t", "file"][..], "-t file needs --path FILE"),
            (&["-t", "nbd"][..], "-t nbd needs --uri URI"),
            (
                &["-t", "mem", "-s", "1M", "--path", "/x"][..],
                "--path applies only to -t file",
            ),
            (
                &["-t", "mem", "-s", "1M", "--uri", "nbd://h"][..],
                "--uri applies only to -t nbd",
            ),
            (
                &["-t", "nbd", "--uri", "nbd://h", "-s", "1M"][..],
                "--size applies only to -t null, -t mem, -t file",
            ),
            (
                &["-t", "file", "-f", "/x", "--logical-block", "4K"][..],
                "--logical-block applies only to -t null, -t mem",
            ),
            (&["-t", "null", "-s", "12Q"][..], "invalid size"),
            (
                &["-t", "file", "-f", "/x", "--inline-io", "maybe"][..],
                "not one of auto, on, off",
            ),
            (&["-t", "nbd", "--uri", "http://x"][..], "invalid NBD URI"),
            (
                &["-t", "null", "-s", "1M", "--filter", "delay:ms=x"][..],
                "not a whole number",
            ),
            (&["-t", "qcow9"][..], "invalid value 'qcow9'"),
        ] {
            let e = parse(args).unwrap_err();
            let first = e.lines().next().unwrap();
            assert!(first.contains(want), "{args:?}: {e}");
        }
    }
}

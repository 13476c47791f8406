//! `ublkd completions SHELL` and `ublkd man DIR`: shell completions and man pages generated from
//! the command-line definition itself (clap_complete, clap_mangen), so they never drift from it.
//! `scripts/install.sh` installs both.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write ublkd.1 and one ublkd-COMMAND.1 per command into (created if missing).
    pub dir: PathBuf,
}

pub fn completions(a: CompletionsArgs) -> ExitCode {
    use clap_complete::{generate, shells};
    let mut cmd = crate::Cli::command();
    let mut buf = Vec::new();
    match a.shell {
        Shell::Bash => generate(shells::Bash, &mut cmd, "ublkd", &mut buf),
        Shell::Zsh => generate(shells::Zsh, &mut cmd, "ublkd", &mut buf),
        Shell::Fish => generate(shells::Fish, &mut cmd, "ublkd", &mut buf),
    }
    crate::out::print(String::from_utf8_lossy(&buf).trim_end())
}

/// The man pages: (file name, roff text) for `ublkd` and each visible command.
pub fn pages() -> Result<Vec<(String, Vec<u8>)>, std::io::Error> {
    let mut cmd = crate::Cli::command();
    cmd.build();
    let mut out = Vec::new();
    let render = |c: clap::Command| -> Result<Vec<u8>, std::io::Error> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).render(&mut buf)?;
        Ok(buf)
    };
    out.push(("ublkd.1".to_string(), render(cmd.clone())?));
    // `help` is clap's own; hidden commands are ublkd's plumbing.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("ublkd-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("ublkd {}", sub.get_name()))
            .version(env!("UBLKD_VERSION"));
        out.push((format!("{name}.1"), render(page)?));
    }
    Ok(out)
}

pub fn man(a: ManArgs) -> ExitCode {
    let pages = match pages() {
        Ok(p) => p,
        Err(e) => return crate::fail(format!("cannot render the man pages: {e}")),
    };
    if let Err(e) = std::fs::create_dir_all(&a.dir) {
        return crate::fail(format!("cannot create {}: {e}", a.dir.display()));
    }
    for (name, text) in &pages {
        let p = a.dir.join(name);
        if let Err(e) = std::fs::write(&p, text) {
            return crate::fail(format!("cannot write {}: {e}", p.display()));
        }
    }
    crate::out::print(format!("{} man pages in {}", pages.len(), a.dir.display()))
}

//! What commands print on stdout. A reader that has gone away (`ublkd list --json | grep -q
//! live`, `| head`) is not an error: the rest was not wanted, so the command ends quietly and
//! successfully instead of panicking in `println!` (Rust ignores SIGPIPE, so the write fails
//! with EPIPE rather than killing us as it would a C tool).

use std::fmt::Display;
use std::io::{ErrorKind, Write};
use std::process::ExitCode;

/// Print `text` and a newline; other write errors are the command's failure, in one line.
pub fn print(text: impl Display) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => crate::fail(format!("cannot write to stdout: {e}")),
    }
}

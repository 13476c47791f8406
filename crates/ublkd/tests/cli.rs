//! The CLI's generated documents and version, from the built binary: completions for each
//! shell, a man page per command, and the commit in --version.

use std::process::Command;

fn ublkd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ublkd"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn completions_cover_every_command_in_each_shell() {
    for (shell, marker, name_opt) in [
        ("bash", "complete -F _ublkd", "--name"),
        ("zsh", "#compdef ublkd", "--name="),
        ("fish", "complete -c ublkd", "-l name"),
    ] {
        let (ok, out, err) = ublkd(&["completions", shell]);
        assert!(ok, "{shell}: {err}");
        assert!(out.contains(marker), "{shell} completions lack {marker}");
        for cmd in [
            "add", "list", "del", "resize", "recover", "upgrade", "export",
        ] {
            assert!(out.contains(cmd), "{shell} completions lack {cmd}");
        }
        assert!(out.contains(name_opt), "{shell} completions lack --name");
    }
    let (ok, _, err) = ublkd(&["completions", "tcsh"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
}

#[test]
fn man_pages_render_for_each_command() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("man1");
    let (ok, out, err) = ublkd(&["man", dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.ends_with(&format!("man pages in {}\n", dir.display())),
        "{out}"
    );
    for (page, about) in [
        ("ublkd", "Serve Linux block devices from userspace"),
        ("ublkd-add", "Create a device"),
        ("ublkd-resize", "Grow a live device"),
        ("ublkd-list", "Show devices"),
        ("ublkd-completions", "shell completions"),
    ] {
        let text = std::fs::read_to_string(dir.join(format!("{page}.1"))).unwrap();
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!(".TH {page} 1 "))),
            "{page}.1 has no .TH header"
        );
        assert!(text.contains(about), "{page}.1 lacks '{about}'");
    }
    // Plumbing and clap's own help command get no page.
    for absent in ["ublkd-serve.1", "ublkd-udev-id.1", "ublkd-help.1"] {
        assert!(!dir.join(absent).exists(), "{absent}");
    }
}

#[test]
fn version_names_the_commit() {
    let (ok, out, _) = ublkd(&["--version"]);
    assert!(ok);
    assert!(
        out.starts_with(&format!("ublkd {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    // Built from a git checkout (as the tests are): the commit it was built at.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string());
    if let Some(head) = head {
        assert!(out.contains(&format!("(git {head})")), "{out} lacks {head}");
    }
}

#[test]
fn udev_id_refuses_what_is_not_a_ublk_disk() {
    let (ok, _, err) = ublkd(&["udev-id", "sda1"]);
    assert!(!ok);
    assert_eq!(err.trim(), "ublkd: error: 'sda1' is not a ublk disk name");
}

#[test]
fn bad_names_are_refused_in_one_line_before_anything_starts() {
    let (ok, _, err) = ublkd(&["add", "-t", "null", "-s", "1M", "--name", "a/b"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--name 'a/b' contains '/'"), "{err}");
}

#[test]
fn install_script_stages_binary_completions_man_pages_rule_and_unit() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/install.sh");
    let out = Command::new("sh")
        .args([script, "--prefix", "/usr", "--destdir"])
        .arg(root)
        .args(["--bin", env!("CARGO_BIN_EXE_ublkd")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "usr/bin/ublkd",
        "usr/share/bash-completion/completions/ublkd",
        "usr/share/zsh/site-functions/_ublkd",
        "usr/share/fish/vendor_completions.d/ublkd.fish",
        "usr/share/man/man1/ublkd.1",
        "usr/share/man/man1/ublkd-resize.1",
    ] {
        let len = std::fs::metadata(root.join(f))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 0, "{f} missing or empty");
    }
    // The rule and the unit run the installed binary, not the default path.
    let rule = std::fs::read_to_string(root.join("etc/udev/rules.d/60-ublkd.rules")).unwrap();
    assert!(
        rule.contains(r#"IMPORT{program}="/usr/bin/ublkd udev-id %k""#),
        "{rule}"
    );
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/ublkd@.service")).unwrap();
    assert!(unit.contains("exec /usr/bin/ublkd add") && !unit.contains("/usr/local/bin"));
    assert!(unit.contains("Type=notify"));
}

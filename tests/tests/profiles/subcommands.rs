//! Part 2: bad profiles are refused and leave nothing behind; the profile
//! subcommands.

use std::path::Path;

use nono_tests::profilelab::{agent, unique, Exec, Leftovers};
use nono_tests::sys::TempDir;

use super::{assert_code, prereqs, s, write_profile};

#[test]
fn bad_profiles_are_refused_and_leave_nothing_behind() {
    prereqs();
    let dir = TempDir::new("prof-bad");
    let unknown = write_profile(
        &dir,
        "unknown.toml",
        "extends = \"default\"\n\n[network]\nloopback = \"any\"\nbogus_key = 1\n",
    );
    let a = write_profile(&dir, "a.toml", "extends = \"b.toml\"\n");
    let _b = write_profile(&dir, "b.toml", "extends = \"a.toml\"\n");
    let selfcycle = write_profile(&dir, "self.toml", "extends = \"self.toml\"\n");
    let syntax = write_profile(&dir, "syntax.toml", "[filesystem]\nread = [\"/usr\"\n");
    let var = write_profile(&dir, "var.toml", "[filesystem]\nread = [\"$NOPE/x\"]\n");
    let rel = write_profile(&dir, "rel.toml", "[filesystem]\nread = [\"relative/x\"]\n");
    let ext = write_profile(&dir, "ext.toml", "extends = \"nono-no-such-profile\"\n");
    let port = write_profile(&dir, "port.toml", "[network]\nloopback = [70000]\n");
    let nonexistent = format!("/nonexistent-{}.toml", unique("p"));

    // (flags, exit code, text the error must contain)
    let f = |p: &Path| vec!["--profile".to_string(), s(p)];
    let cases: Vec<(Vec<String>, i32, String)> = vec![
        (
            vec!["--profile".into(), nonexistent.clone()],
            125,
            nonexistent.clone(),
        ),
        (f(&unknown), 125, format!("{}:5:1:", s(&unknown))),
        (f(&a), 125, "cycle".into()),
        (f(&selfcycle), 125, "cycle".into()),
        (f(&syntax), 125, format!("{}:2:", s(&syntax))),
        (f(&var), 125, format!("{}:2:9:", s(&var))),
        (f(&rel), 125, format!("{}:2:9:", s(&rel))),
        (f(&ext), 125, format!("{}:1:11:", s(&ext))),
        (f(&port), 125, format!("{}:2:", s(&port))),
        (
            vec!["--profile".into(), "nono-no-such-profile".into()],
            125,
            "nono-no-such-profile".into(),
        ),
        // usage errors: nono-agent's own failure, 125 like the rest
        (
            vec!["--loopback-port".into(), "notaport".into()],
            125,
            "notaport".into(),
        ),
        (
            vec!["--proxy-max-connections".into(), "many".into()],
            125,
            "many".into(),
        ),
    ];
    for enf in ["bpf", "seccomp"] {
        for (flags, code, text) in &cases {
            let left = Leftovers::snapshot();
            let out = Exec::new(enf).flags(flags).run(&[
                "sh",
                "-c",
                "echo COMMAND-RAN; sleep 30",
                &left.marker,
            ]);
            let what = format!("{enf}: exec {flags:?}");
            assert_code(&out, *code, &what);
            assert!(
                !out.stdout.contains("COMMAND-RAN"),
                "{what}: the command ran\n{}",
                out.describe()
            );
            assert!(
                out.stderr.contains(text.as_str()),
                "{what}: stderr should contain {text:?}\n{}",
                out.describe()
            );
            left.assert_none(&what);
        }
    }
    // The cycle names its chain.
    let out = Exec::new("bpf").flags(f(&a)).run(&["true"]);
    assert!(
        out.stderr.contains("a.toml") && out.stderr.contains("b.toml"),
        "the cycle error should list the chain\n{}",
        out.describe()
    );

    // profile validate names the line and column too, and exits non-zero.
    for (p, text) in [
        (&unknown, format!("{}:5:1:", s(&unknown))),
        (&syntax, format!("{}:2:", s(&syntax))),
        (&var, format!("{}:2:9:", s(&var))),
    ] {
        let v = agent(&["profile", "validate", &s(p)]);
        assert_ne!(v.code(), 0, "validate {}\n{}", p.display(), v.describe());
        assert!(
            v.stderr.contains(&text) || v.stdout.contains(&text),
            "validate {} should name {text}\n{}",
            p.display(),
            v.describe()
        );
    }
    let v = agent(&["profile", "validate", &nonexistent]);
    assert_ne!(v.code(), 0, "validate of a missing file\n{}", v.describe());
}

#[test]
fn profile_list_show_validate() {
    prereqs();
    let out = agent(&["profile", "list"]);
    assert_code(&out, 0, "profile list");
    for name in [
        "default",
        "claude-code",
        "codex",
        "ci-rust",
        "ci-node",
        "ci-python",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name) && l.contains("built-in")),
            "profile list should show the built-in {name}\n{}",
            out.describe()
        );
    }
    let show = agent(&["profile", "show", "claude-code"]);
    assert_code(&show, 0, "profile show claude-code");
    assert!(
        show.stdout.contains("api.anthropic.com") && show.stdout.contains("[network]"),
        "profile show claude-code should print the resolved TOML\n{}",
        show.describe()
    );
    // What `show` prints is itself a valid profile that runs.
    let dir = TempDir::new("prof-show");
    let p = write_profile(&dir, "shown.toml", &show.stdout);
    let v = agent(&["profile", "validate", &s(&p)]);
    assert_code(&v, 0, "validate of `profile show claude-code` output");
    let out = Exec::new("bpf").flags(["--profile", &s(&p)]).run(&["true"]);
    assert_code(&out, 0, "exec with the shown profile");
    let bad = agent(&["profile", "show", "nono-no-such-profile"]);
    assert_ne!(bad.code(), 0, "show of an unknown name\n{}", bad.describe());
}

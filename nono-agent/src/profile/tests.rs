//! Profile lookup, layering, validation and listing, against temporary
//! user and system directories. Over 600 lines: one test per rule of
//! profiles/README.md, kept together so the rules read as a list.

use super::lookup::toml_files;
use super::*;
use nono_proxy::DomainRule;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A temporary directory holding a user dir (`config/nono-agent/profiles`),
/// a system dir, and loose files; removed on drop.
struct Env {
    root: PathBuf,
    ctx: ExpandContext,
    dirs: Dirs,
}

impl Env {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "nono-profile-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("config/nono-agent/profiles")).unwrap();
        std::fs::create_dir_all(root.join("system")).unwrap();
        std::fs::create_dir_all(root.join("files")).unwrap();
        let ctx = ExpandContext {
            cwd: PathBuf::from("/work/project"),
            home: Some(PathBuf::from("/home/u")),
            tmpdir: PathBuf::from("/tmp/t"),
            xdg_config_home: Some(root.join("config")),
        };
        let mut dirs = Dirs::new(&ctx);
        dirs.system = root.join("system");
        Self { root, ctx, dirs }
    }

    fn user(&self, name: &str, text: &str) -> PathBuf {
        let p = self
            .root
            .join(format!("config/nono-agent/profiles/{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn system(&self, name: &str, text: &str) -> PathBuf {
        let p = self.root.join(format!("system/{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.root.join("files").join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn load(&self, spec: &str) -> Result<ResolvedProfile, ProfileError> {
        load_in(spec, &self.ctx, &self.dirs)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn texts(v: &[DomainRule]) -> Vec<&str> {
    v.iter().map(|r| r.text.as_str()).collect()
}

/// A bad profile: what, file text, expected line:column, message fragment.
type BadCase = (&'static str, &'static str, (usize, usize), &'static str);

#[test]
fn bad_profiles_name_file_line_and_column() {
    let cases: &[BadCase] = &[
        (
            "unknown key",
            "[network]\nallow_domain = [\"a.test\"]\n",
            (2, 1),
            "unknown field `allow_domain`",
        ),
        (
            "unknown table",
            "description = \"x\"\n[netwrk]\n",
            (2, 2),
            "unknown field `netwrk`",
        ),
        (
            "unknown top-level key",
            "extend = \"default\"\n",
            (1, 1),
            "unknown field `extend`",
        ),
        (
            "wrong type",
            "[network]\nallow_domains = \"a.test\"\n",
            (2, 17),
            "invalid type: string \"a.test\", expected a sequence",
        ),
        (
            "wrong type for a table",
            "network = 5\n",
            (1, 11),
            "network must be a table, not integer `5`",
        ),
        (
            "bad CIDR",
            "[network]\nallow_cidrs = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
            (2, 30),
            "not an address or network",
        ),
        (
            "bad domain pattern",
            "[network]\nallow_domains = [\n  \"ok.test\",\n  \"a.*.test\",\n]\n",
            (4, 3),
            "'*' is only allowed as a whole first label",
        ),
        (
            "bad port in a domain rule",
            "[network]\ndeny_domains = [\"a.test:99999\"]\n",
            (2, 17),
            "bad port",
        ),
        (
            "port out of range in loopback",
            "[network]\nloopback = [5432, 70000]\n",
            (2, 19),
            "70000 is not a port",
        ),
        (
            "port 0 in loopback",
            "[network]\nloopback = [0]\n",
            (2, 13),
            "0 is not a port",
        ),
        (
            "loopback keyword",
            "[network]\nloopback = \"all\"\n",
            (2, 12),
            "expected \"any\" or a list of ports",
        ),
        (
            "bad pin",
            "[network]\nresolve = [\"internal.test=10.1.2.300\"]\n",
            (2, 12),
            "is not an IP address",
        ),
        (
            "bad upstream",
            "[network]\nupstream_proxy = \"https://p.test:3128\"\n",
            (2, 18),
            "only http:// proxies",
        ),
        (
            "bad env",
            "[process]\nenv = \"dirty\"\n",
            (2, 7),
            "expected \"inherit\", \"clean\" or a list",
        ),
        (
            "bad env name",
            "[process]\nenv = [\"PATH\", \"A=B\"]\n",
            (2, 16),
            "not an environment variable name",
        ),
        (
            "bad user",
            "[process]\nuser = \"a b\"\n",
            (2, 8),
            "not a user name or uid",
        ),
        (
            "unknown variable",
            "[filesystem]\nread = [\"/usr\", \"$FOO/x\"]\n",
            (2, 17),
            "unknown variable $FOO",
        ),
        (
            "unknown braced variable",
            "[filesystem]\nwrite = [\"${USER}/x\"]\n",
            (2, 10),
            "unknown variable $USER",
        ),
        (
            "lone dollar",
            "[filesystem]\nexec = [\"/opt/$/x\"]\n",
            (2, 9),
            "'$' must start a variable",
        ),
        (
            "unterminated brace",
            "[network]\nallow_unix_sockets = [\"${HOME\"]\n",
            (2, 23),
            "unterminated",
        ),
        (
            "relative path",
            "[filesystem]\nread = [\"relative/x\"]\n",
            (2, 9),
            "is not an absolute path",
        ),
        ("TOML syntax", "[network\n", (1, 9), ""),
        (
            "empty extends",
            "extends = \"\"\n",
            (1, 11),
            "empty profile name",
        ),
    ];
    let env = Env::new();
    for (i, (what, text, at, fragment)) in cases.iter().enumerate() {
        let path = env.file(&format!("bad{i}.toml"), text);
        let err = env
            .load(path.to_str().unwrap())
            .expect_err(&format!("{what}: should fail"));
        let msg = err.to_string();
        let (line, col) = at;
        let want = format!("{}:{line}:{col}: ", path.display());
        assert!(
            msg.starts_with(&want),
            "{what}: {msg:?} should start with {want:?}"
        );
        assert!(
            msg.contains(fragment),
            "{what}: {msg:?} should contain {fragment:?}"
        );
        // validate_file reports the same thing.
        let again = validate_file(&path, &env.ctx).expect_err(what).to_string();
        assert_eq!(again, msg, "{what}");
    }
}

#[test]
fn unset_home_is_an_error_where_used() {
    let mut env = Env::new();
    env.ctx.home = None;
    let path = env.file("h.toml", "[filesystem]\n\nread = [\"$HOME/.x\"]\n");
    let err = env.load(path.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, ProfileError::UnsetVariable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(":3:9: $HOME has no value"),
        "{err}"
    );
    // Built-ins that mention $HOME fail the same way instead of granting
    // something else.
    let err = env.load("default").unwrap_err().to_string();
    assert!(err.starts_with("builtin:default.toml:"), "{err}");
    // An unknown cwd is never guessed.
    env.ctx.cwd = PathBuf::new();
    env.ctx.home = Some(p("/home/u"));
    let err = env.load("default").unwrap_err().to_string();
    assert!(err.contains("$CWD has no value"), "{err}");
}

#[test]
fn cycle_in_extends_lists_the_chain() {
    let env = Env::new();
    env.user("a", "extends = \"b\"\n");
    env.user("b", "extends = \"c\"\n");
    env.user("c", "extends = \"a\"\n");
    let err = env.load("a").unwrap_err();
    let ProfileError::Cycle { chain } = &err else {
        panic!("{err:?}")
    };
    let names: Vec<&str> = chain.iter().map(|c| c.split(' ').next().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c", "a"]);
    assert!(err.to_string().contains("a.toml) -> b ("), "{err}");

    // A file extending itself by path.
    let path = env.file("self.toml", "extends = \"./self.toml\"\n");
    let err = env.load(path.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, ProfileError::Cycle { .. }), "{err:?}");
}

#[test]
fn missing_profiles_say_where_they_looked() {
    let env = Env::new();
    let err = env.load("nope").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ProfileError::NotFound { .. }));
    assert!(
        msg.contains(
            &env.root
                .join("config/nono-agent/profiles/nope.toml")
                .display()
                .to_string()
        ),
        "{msg}"
    );
    assert!(
        msg.contains(&env.root.join("system/nope.toml").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("built-in profiles (default, "), "{msg}");

    let missing = env.root.join("files/missing.toml");
    let msg = env.load(missing.to_str().unwrap()).unwrap_err().to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    let msg = validate_file(&missing, &env.ctx).unwrap_err().to_string();
    assert!(msg.contains("not found"), "{msg}");

    // Relative paths are relative to the current directory.
    let mut ctx = env.ctx.clone();
    ctx.cwd = env.root.join("files");
    env.file("rel.toml", "description = \"rel\"\n");
    let r = load_in("./rel.toml", &ctx, &env.dirs).unwrap();
    assert_eq!(r.name, "rel");
    assert_eq!(r.description.as_deref(), Some("rel"));

    // A missing parent names the extends that asked for it.
    let path = env.file("child.toml", "description = \"x\"\nextends = \"ghost\"\n");
    let msg = env.load(path.to_str().unwrap()).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!(
            "{}:2:11: profile \"ghost\" not found",
            path.display()
        )),
        "{msg}"
    );
    assert!(matches!(
        env.load("a/../"),
        Err(ProfileError::NotFound { .. })
    ));
    assert!(matches!(
        env.load(".hidden"),
        Err(ProfileError::BadName { .. })
    ));
}

#[test]
fn lists_append_parent_first_without_duplicates() {
    let env = Env::new();
    env.user(
        "base",
        r#"
[network]
allow_domains = ["a.test", "b.test", "a.test"]
allow_cidrs = ["10.0.0.0/8:5432"]
resolve = ["x.test=10.0.0.1", "y.test=10.0.0.2"]
allow_unix_sockets = ["/run/a.sock"]
[filesystem]
read = ["/usr", "/etc/"]
write = ["$CWD"]
exec = ["/usr"]
"#,
    );
    let child = env.file(
        "child.toml",
        r#"
extends = "base"
[network]
allow_domains = ["c.test", "B.TEST", "b.test:8443"]
allow_cidrs = ["10.0.0.0/8:5432", "10.0.0.0/8"]
resolve = ["x.test=10.9.9.9"]
allow_unix_sockets = ["/run/a.sock", "/run/b.sock"]
[filesystem]
read = ["/etc", "/./opt//x/"]
write = ["/work/project", "$TMPDIR"]
"#,
    );
    let r = env.load(child.to_str().unwrap()).unwrap();
    assert_eq!(r.name, "child");
    assert_eq!(r.chain.len(), 2);
    assert!(r.chain[0].starts_with("base ("), "{:?}", r.chain);
    assert!(r.chain[1].starts_with("child ("), "{:?}", r.chain);
    let n = &r.network;
    assert_eq!(
        texts(&n.allow_domains),
        ["a.test", "b.test", "c.test", "b.test:8443"]
    );
    let cidrs: Vec<&str> = n.allow_cidrs.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(cidrs, ["10.0.0.0/8:5432", "10.0.0.0/8"]);
    let pins: Vec<String> = n
        .resolve
        .iter()
        .map(|p| format!("{}={}", p.name, p.addrs[0]))
        .collect();
    assert_eq!(pins, ["y.test=10.0.0.2", "x.test=10.9.9.9"]);
    assert_eq!(n.allow_unix_sockets, [p("/run/a.sock"), p("/run/b.sock")]);
    assert_eq!(r.filesystem.read, [p("/usr"), p("/etc"), p("/opt/x")]);
    assert_eq!(r.filesystem.write, [p("/work/project"), p("/tmp/t")]);
    assert_eq!(r.filesystem.exec, [p("/usr")]);
}

#[test]
fn scalars_override_child_wins() {
    let env = Env::new();
    env.user(
        "base",
        r#"
description = "base"
[network]
loopback = "any"
upstream_proxy = "http://parent.test:3128"
[process]
env = ["PATH", "HOME"]
user = "nobody"
"#,
    );
    env.user(
        "narrow",
        r#"
extends = "base"
description = "narrow"
[network]
loopback = [5432, 6379, 5432]
upstream_proxy = "http://child.test:8080"
[process]
env = "clean"
user = "1000"
"#,
    );
    env.user(
        "wide",
        "extends = \"narrow\"\n[network]\nloopback = \"any\"\n",
    );
    env.user("silent", "extends = \"narrow\"\n");

    let r = env.load("narrow").unwrap();
    assert_eq!(r.description.as_deref(), Some("narrow"));
    assert_eq!(r.network.loopback, Loopback::Ports(vec![5432, 6379]));
    assert_eq!(
        r.network
            .upstream_proxy
            .as_ref()
            .map(|u| u.authority.as_str()),
        Some("child.test:8080")
    );
    assert_eq!(r.process.env, EnvPolicy::Clean);
    assert_eq!(r.process.user.as_deref(), Some("1000"));

    // Widening back to "any" is a scalar override too.
    assert_eq!(env.load("wide").unwrap().network.loopback, Loopback::Any);
    // A child that sets nothing inherits every scalar.
    let s = env.load("silent").unwrap();
    assert_eq!(s.description.as_deref(), Some("narrow"));
    assert_eq!(s.network.loopback, Loopback::Ports(vec![5432, 6379]));
    assert_eq!(s.process.user.as_deref(), Some("1000"));

    let b = env.load("base").unwrap();
    assert_eq!(
        b.process.env,
        EnvPolicy::PassThrough(vec!["PATH".into(), "HOME".into()])
    );
}

#[test]
fn deny_from_any_level_wins() {
    use nono_proxy::{ProxyPolicy, Target};
    let env = Env::new();
    env.user(
        "base",
        "[network]\ndeny_domains = [\"bad.allowed.test\"]\nallow_domains = [\"ok.test\"]\n",
    );
    env.user(
        "child",
        "extends = \"base\"\n[network]\nallow_domains = [\"*.allowed.test\", \"bad.allowed.test\"]\ndeny_domains = [\"ok.test\"]\n",
    );
    let r = env.load("child").unwrap();
    assert_eq!(
        texts(&r.network.deny_domains),
        ["bad.allowed.test", "ok.test"]
    );
    let policy = ProxyPolicy {
        allow: r.network.allow_domains.clone(),
        deny: r.network.deny_domains.clone(),
        cidrs: r.network.allow_cidrs.clone(),
        deny_cidrs: Vec::new(),
    };
    let check = |h: &str| policy.check_target(&Target::parse(h).unwrap(), 443).is_ok();
    assert!(check("x.allowed.test"));
    assert!(
        !check("bad.allowed.test"),
        "parent's deny beats child's allow"
    );
    assert!(!check("ok.test"), "child's deny beats parent's allow");
}

#[test]
fn every_builtin_loads_and_validates() {
    let env = Env::new();
    for name in builtin::names() {
        let r = env
            .load(name)
            .unwrap_or_else(|e| panic!("built-in {name}: {e}"));
        assert_eq!(r.name, name);
        assert!(r.description.is_some(), "{name} has a description");
        assert_eq!(r.network.loopback, Loopback::Any, "{name}");
        assert_eq!(r.process.env, EnvPolicy::Inherit, "{name}");
        let fs = &r.filesystem;
        assert!(
            fs.write.contains(&p("/work/project")),
            "{name}: $CWD writable"
        );
        assert!(fs.write.contains(&p("/tmp/t")), "{name}: $TMPDIR writable");
        assert!(fs.exec.contains(&p("/usr")), "{name}");
        assert!(
            !fs.read.contains(&p("/home/u")),
            "{name}: $HOME not readable"
        );
        assert!(!fs.write.contains(&p("/proc")), "{name}");
        for path in fs.read.iter().chain(&fs.write).chain(&fs.exec) {
            assert!(path.is_absolute(), "{name}: {}", path.display());
        }
        if name != "default" {
            assert!(
                r.chain[0].starts_with("default (builtin:default.toml)"),
                "{name}"
            );
            assert!(!r.network.allow_domains.is_empty(), "{name}");
        }
        // The shipped file itself validates by path too.
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../profiles")
            .join(format!("{name}.toml"));
        validate_file(&file, &env.ctx).unwrap_or_else(|e| panic!("{name}: {e}"));
        // And `show` output loads back to the same policy.
        let shown = env.file(&format!("shown-{name}.toml"), &r.to_toml_string());
        let again = env.load(shown.to_str().unwrap()).unwrap();
        assert_eq!(again.filesystem, r.filesystem, "{name}");
        assert_eq!(
            texts(&again.network.allow_domains),
            texts(&r.network.allow_domains)
        );
        assert_eq!(again.process, r.process);
        assert_eq!(again.description, r.description);
    }
    let default = env.load("default").unwrap();
    assert!(default.network.allow_domains.is_empty());
    assert!(default.filesystem.read.contains(&p("/home/u/.gitconfig")));
    for dev in [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/tty",
        "/dev/shm",
    ] {
        assert!(default.filesystem.write.contains(&p(dev)), "{dev}");
    }
    let claude = env.load("claude-code").unwrap();
    assert!(texts(&claude.network.allow_domains).contains(&"api.anthropic.com"));
    assert!(claude.filesystem.write.contains(&p("/home/u/.claude")));
}

#[test]
fn every_file_in_profiles_dir_is_embedded() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let mut on_disk: Vec<String> = toml_files(&dir).into_iter().map(|(n, _)| n).collect();
    let mut embedded: Vec<String> = builtin::names().iter().map(|s| s.to_string()).collect();
    on_disk.sort();
    embedded.sort();
    assert_eq!(on_disk, embedded);
}

#[test]
fn list_shows_builtins_and_shadowing() {
    let env = Env::new();
    let all = list_in(&env.ctx, &env.dirs);
    let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
    let mut sorted = builtin::names();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(all
        .iter()
        .all(|i| i.source == ProfileSource::Builtin && i.shadows.is_empty()));
    assert!(all
        .iter()
        .all(|i| i.error.is_none() && i.description.is_some()));

    let user = env.user("codex", "extends = \"codex\"\ndescription = \"mine\"\n");
    let system = env.system("codex", "extends = \"codex\"\n");
    env.system("team", "description = \"team\"\n");
    env.user("broken", "[network]\nnope = 1\n");
    let all = list_in(&env.ctx, &env.dirs);
    let get = |n: &str| all.iter().find(|i| i.name == n).unwrap();
    let codex = get("codex");
    assert_eq!(codex.source, ProfileSource::User(user));
    assert_eq!(
        codex.shadows,
        [ProfileSource::System(system), ProfileSource::Builtin]
    );
    assert_eq!(codex.description.as_deref(), Some("mine"));
    assert!(codex.error.is_none(), "{:?}", codex.error);
    assert!(matches!(get("team").source, ProfileSource::System(_)));
    let broken = get("broken");
    assert!(broken
        .error
        .as_deref()
        .unwrap()
        .contains("unknown field `nope`"));
    assert!(names_sorted(&all));
}

fn names_sorted(v: &[ProfileInfo]) -> bool {
    v.windows(2).all(|w| w[0].name <= w[1].name)
}

#[test]
fn a_profile_extending_its_own_name_extends_the_next_source() {
    let env = Env::new();
    env.user(
        "claude-code",
        "extends = \"claude-code\"\n[network]\nallow_domains = [\"mcp.internal.test\"]\n",
    );
    let r = env.load("claude-code").unwrap();
    assert_eq!(r.chain.len(), 3, "{:?}", r.chain);
    assert!(r.chain[0].starts_with("default (builtin:"));
    assert!(r.chain[1].starts_with("claude-code (builtin:"));
    assert!(r.chain[2].contains("config/nono-agent/profiles/claude-code.toml"));
    let domains = texts(&r.network.allow_domains);
    assert!(domains.contains(&"api.anthropic.com"));
    assert_eq!(domains.last(), Some(&"mcp.internal.test"));

    // Via the system tier.
    env.system(
        "claude-code",
        "extends = \"claude-code\"\ndescription = \"sys\"\n",
    );
    let r = env.load("claude-code").unwrap();
    assert_eq!(r.chain.len(), 4, "{:?}", r.chain);
    assert_eq!(r.description.as_deref(), Some("sys"));
}

#[test]
fn expansion() {
    let env = Env::new();
    let f = env.file(
        "vars.toml",
        r#"
[filesystem]
read = ["${HOME}/.x", "$HOME/a/../b", "/opt/cost$$/x", "$CWD/sub/", "${TMPDIR}"]
"#,
    );
    let r = env.load(f.to_str().unwrap()).unwrap();
    assert_eq!(
        r.filesystem.read,
        [
            p("/home/u/.x"),
            p("/home/u/a/../b"),
            p("/opt/cost$/x"),
            p("/work/project/sub"),
            p("/tmp/t"),
        ]
    );
    // `show` doubles the `$` so the output means the same when loaded.
    let shown = env.file("vars-shown.toml", &r.to_toml_string());
    let again = env.load(shown.to_str().unwrap()).unwrap();
    assert_eq!(again.filesystem, r.filesystem);
}

#[test]
fn show_renders_every_field() {
    let env = Env::new();
    env.user(
        "full",
        r#"
extends = "default"
description = "all of it"
[network]
allow_domains = ["api.test", "*.cdn.test:8443"]
deny_domains = ["bad.cdn.test:8443"]
allow_cidrs = ["10.0.0.0/8:5432", "[2001:db8::/32]:443"]
loopback = [5432]
upstream_proxy = "http://me:secret@proxy.corp.test:3128"
resolve = ["internal.test=10.1.2.3,[2001:db8::5]"]
allow_unix_sockets = ["/var/run/docker.sock"]
[process]
env = ["PATH", "TERM"]
user = "nobody"
"#,
    );
    let r = env.load("full").unwrap();
    let text = r.to_toml_string();
    assert!(!text.contains("secret"), "{text}");
    assert!(!text.contains("extends"), "{text}");
    assert!(text.contains("credentials are not shown"), "{text}");
    let shown = env.file("full-shown.toml", &text);
    let again = env.load(shown.to_str().unwrap()).unwrap();
    let n = &again.network;
    assert_eq!(texts(&n.allow_domains), texts(&r.network.allow_domains));
    assert_eq!(texts(&n.deny_domains), ["bad.cdn.test:8443"]);
    assert_eq!(n.allow_cidrs, r.network.allow_cidrs);
    assert_eq!(n.loopback, Loopback::Ports(vec![5432]));
    assert_eq!(
        n.upstream_proxy.as_ref().map(|u| u.authority.as_str()),
        Some("proxy.corp.test:3128")
    );
    assert_eq!(n.resolve, r.network.resolve);
    assert_eq!(n.allow_unix_sockets, [p("/var/run/docker.sock")]);
    assert_eq!(again.filesystem, r.filesystem);
    assert_eq!(again.process, r.process);
    assert_eq!(again.chain.len(), 1);
}

#[test]
fn locations_count_characters() {
    let text = "a = \"é\"\nbb = [1, \"x\"]\n";
    let l = raw::location(text, "f", text.find("\"x\"").unwrap());
    assert_eq!((l.line, l.column), (2, 10));
    let l = raw::location(text, "f", 7); // after the é (2 bytes)
    assert_eq!((l.line, l.column), (1, 7));
    let l = raw::location(text, "f", 10_000);
    assert_eq!(l.line, 3);
}

#[test]
fn transparent_is_a_scalar_off_unless_set() {
    let env = Env::new();
    env.user("on", "[network]\ntransparent = true\n");
    env.user("inherits", "extends = \"on\"\n");
    env.user("off", "extends = \"on\"\n[network]\ntransparent = false\n");
    env.user("bad", "[network]\ntransparent = \"yes\"\n");
    assert!(env.load("on").unwrap().network.transparent);
    assert!(env.load("inherits").unwrap().network.transparent);
    assert!(!env.load("off").unwrap().network.transparent);
    assert!(!env.load("default").unwrap().network.transparent);
    let e = env.load("bad").unwrap_err().to_string();
    assert!(e.contains("bad.toml:2:"), "{e}");
}

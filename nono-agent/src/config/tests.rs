use super::*;

const F: &str = "/etc/nono-agent/config.toml";

fn err(text: &str) -> String {
    parse(text, F).unwrap_err().to_string()
}

/// The error names FILE:LINE:COLUMN and says `what`.
fn assert_at(text: &str, line: usize, column: usize, what: &str) {
    let e = err(text);
    let at = format!("{F}:{line}:{column}: ");
    assert!(
        e.starts_with(&at),
        "{text:?}: {e:?} does not start with {at:?}"
    );
    assert!(e.contains(what), "{text:?}: {e:?} does not say {what:?}");
}

#[test]
fn empty_file_is_the_default() {
    let c = parse("", F).unwrap();
    assert!(c.network.deny_domains.is_empty());
    assert!(c.network.deny_cidrs.is_empty());
    assert!(c.network.upstream_proxy.is_none());
    assert!(c.profiles.allowed.is_none());
    assert!(c.events.path.is_none());
    assert!(c.metrics.listen.is_none());
}

#[test]
fn everything_parses_with_its_origin() {
    let text = "# fleet\n[network]\ndeny_domains = [\n  \"evil.test\",\n  \"*.bad.test\",\n]\n\
                deny_cidrs = [\"10.0.0.0/8\", \"[2001:db8::/32]:443\"]\n\
                upstream_proxy = \"http://user:pw@proxy.corp.test:3128\"\n\n\
                [profiles]\nallowed = [\"default\", \"claude-code\", \"default\"]\n\n\
                [events]\npath = \"/var/log/nono-agent/events.jsonl\"\n\n\
                [metrics]\nlisten = \"127.0.0.1:9464\"\n";
    let c = parse(text, F).unwrap();
    let o: Vec<String> = c
        .network
        .deny_domains
        .iter()
        .map(|r| format!("{} {}", r.text, r.origin))
        .collect();
    assert_eq!(
        o,
        [
            "evil.test host config /etc/nono-agent/config.toml:4",
            "*.bad.test host config /etc/nono-agent/config.toml:5"
        ]
    );
    assert_eq!(c.network.deny_cidrs.len(), 2);
    assert_eq!(
        c.network.deny_cidrs[1].origin.to_string(),
        "host config /etc/nono-agent/config.toml:7"
    );
    let up = c.network.upstream_proxy.as_ref().unwrap();
    assert_eq!(up.value.authority, "proxy.corp.test:3128");
    assert_eq!((up.at.line, up.at.column), (8, 18));
    let allowed = c.profiles.allowed.as_ref().unwrap();
    assert_eq!(allowed.value, ["default", "claude-code"]);
    assert_eq!((allowed.at.line, allowed.at.column), (11, 11));
    assert_eq!(
        c.events.path.as_ref().unwrap().value,
        Path::new("/var/log/nono-agent/events.jsonl")
    );
    let m = c.metrics.listen.as_ref().unwrap();
    assert_eq!(m.value, "127.0.0.1:9464".parse::<SocketAddr>().unwrap());
    assert_eq!((m.at.line, m.at.column), (17, 10));
    // show: values with their places, no credentials
    let shown = c.to_string();
    assert!(shown.contains("\"evil.test\",  # host config /etc/nono-agent/config.toml:4"));
    assert!(shown.contains(
        "upstream_proxy = \"http://proxy.corp.test:3128\"  # /etc/nono-agent/config.toml:8:18"
    ));
    assert!(!shown.contains("pw"), "{shown}");
    assert!(shown.contains("listen = \"127.0.0.1:9464\"  # /etc/nono-agent/config.toml:17:10"));
    assert!(HostConfig::default().to_string().contains("no file"));
}

#[test]
fn unknown_keys_and_sections_are_located_errors() {
    assert_at(
        "[network]\nallow_domains = [\"a.test\"]\n",
        2,
        1,
        "unknown field `allow_domains`",
    );
    assert_at("bogus = 1\n", 1, 1, "unknown field `bogus`");
    assert_at(
        "[network]\n\n[logging]\nlevel = 1\n",
        3,
        2,
        "unknown field `logging`",
    );
    assert_at(
        "[metrics]\nlisten = \"127.0.0.1:1\"\nport = 2\n",
        3,
        1,
        "unknown field `port`",
    );
    assert_at("[events]\nfile = \"/x\"\n", 2, 1, "unknown field `file`");
    assert_at("[profiles]\nallow = []\n", 2, 1, "unknown field `allow`");
}

#[test]
fn every_value_is_type_checked_where_it_is() {
    assert_at(
        "[network]\ndeny_domains = \"evil.test\"\n",
        2,
        16,
        "expected a sequence",
    );
    assert_at(
        "[network]\ndeny_domains = [1]\n",
        2,
        17,
        "expected a string",
    );
    assert_at("[network]\ndeny_cidrs = [true]\n", 2, 15, "a string");
    assert_at("[network]\nupstream_proxy = 3128\n", 2, 18, "a string");
    assert_at(
        "[profiles]\nallowed = \"default\"\n",
        2,
        11,
        "expected a sequence",
    );
    assert_at("[profiles]\nallowed = [1]\n", 2, 12, "a string");
    assert_at("[events]\npath = []\n", 2, 8, "a string");
    assert_at("[metrics]\nlisten = 9464\n", 2, 10, "a string");
    assert_at(
        "network = 1\n",
        1,
        11,
        "network must be a table, not integer `1`",
    );
    assert_at("events = \"x\"\n", 1, 10, "events must be a table");
    assert_at("[network]\ndeny_domains = [\n", 2, 17, "");
}

#[test]
fn bad_values_are_located_errors() {
    assert_at(
        "[network]\ndeny_domains = [\"ok.test\", \"bad..test\"]\n",
        2,
        28,
        "bad..test",
    );
    assert_at(
        "[network]\ndeny_cidrs = [\"10.0.0.0/33\"]\n",
        2,
        15,
        "10.0.0.0/33",
    );
    assert_at(
        "[network]\nupstream_proxy = \"https://p.test:3128\"\n",
        2,
        18,
        "only http://",
    );
    assert_at(
        "[network]\nupstream_proxy = \"http://p.test\"\n",
        2,
        18,
        "port",
    );
    assert_at(
        "[profiles]\nallowed = [\"default\", \"./mine.toml\"]\n",
        2,
        23,
        "not a profile name",
    );
    assert_at(
        "[profiles]\nallowed = [\"\"]\n",
        2,
        12,
        "not a profile name",
    );
    assert_at(
        "[profiles]\nallowed = [\"x.toml\"]\n",
        2,
        12,
        "not a profile name",
    );
    assert_at(
        "[events]\npath = \"events.jsonl\"\n",
        2,
        8,
        "not an absolute path",
    );
    assert_at("[events]\npath = \"/var/log/\"\n", 2, 8, "directory");
    assert_at("[metrics]\nlisten = \"0.0.0.0:9464\"\n", 2, 10, "loopback");
    assert_at(
        "[metrics]\nlisten = \"192.0.2.1:9464\"\n",
        2,
        10,
        "loopback",
    );
    assert_at(
        "[metrics]\nlisten = \"[2001:db8::1]:9464\"\n",
        2,
        10,
        "loopback",
    );
    assert_at(
        "[metrics]\nlisten = \"127.0.0.1\"\n",
        2,
        10,
        "address and port",
    );
    assert_at("[metrics]\nlisten = \"127.0.0.1:0\"\n", 2, 10, "port 0");
    assert_at(
        "[metrics]\nlisten = \"localhost:9464\"\n",
        2,
        10,
        "address and port",
    );
    assert!(parse("[metrics]\nlisten = \"[::1]:9464\"\n", F).is_ok());
    assert!(parse("[metrics]\nlisten = \"127.0.0.2:9464\"\n", F).is_ok());
}

#[test]
fn profile_allowlist() {
    let c = parse("[profiles]\nallowed = [\"default\", \"claude-code\"]\n", F).unwrap();
    assert_eq!(profile_refusal(&c, "default", false), None);
    assert_eq!(profile_refusal(&c, "claude-code", false), None);
    let e = profile_refusal(&c, "ci-python", false).unwrap();
    assert!(
        e.contains("not allowed by the host configuration (/etc/nono-agent/config.toml:2:11)"),
        "{e}"
    );
    assert!(e.contains("default, claude-code"), "{e}");
    let e = profile_refusal(&c, "/tmp/mine.toml", false).unwrap();
    assert!(e.contains("not profile files"), "{e}");
    assert!(profile_refusal(&c, "mine.toml", false).is_some());
    // root may name anything
    assert_eq!(profile_refusal(&c, "ci-python", true), None);
    assert_eq!(profile_refusal(&c, "/tmp/mine.toml", true), None);
    // no list: no restriction
    let none = parse("", F).unwrap();
    assert_eq!(profile_refusal(&none, "/tmp/mine.toml", false), None);
    // an empty list allows none
    let empty = parse("[profiles]\nallowed = []\n", F).unwrap();
    assert!(profile_refusal(&empty, "default", false)
        .unwrap()
        .contains("may name: none"));
}

#[test]
fn missing_file_is_empty_and_planted_files_are_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let base = std::env::temp_dir().join(format!("nono-cfg-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = base.join("config.toml");
    let c = load(&f).unwrap();
    assert!(c.file.is_none());
    std::fs::write(&f, "[network]\ndeny_domains = [\"evil.test\"]\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        assert_eq!(load(&f).unwrap().network.deny_domains.len(), 1);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = load(&f).unwrap_err().to_string();
        assert!(
            e.contains("refusing host config") && e.contains("writable by others"),
            "{e}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = load(&f).unwrap_err().to_string();
        assert!(
            e.contains("directory") && e.contains("writable by others"),
            "{e}"
        );
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
        let e = load(&f).unwrap_err().to_string();
        assert!(e.contains("belongs to uid 65534"), "{e}");
    } else {
        // Not root: a file of ours is not root's.
        assert!(load(&f)
            .unwrap_err()
            .to_string()
            .contains("refusing host config"));
    }
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn shipped_example_is_valid_commented_and_uncommented() {
    let text = include_str!("../../../dist/config.toml");
    let c = parse(text, "dist/config.toml").unwrap();
    assert!(c.network.deny_domains.is_empty() && c.profiles.allowed.is_none());
    // Every commented-out setting is valid too.
    let on: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let c = parse(&on, "dist/config.toml").unwrap();
    assert_eq!(c.network.deny_domains.len(), 2);
    assert_eq!(c.network.deny_cidrs.len(), 2);
    assert!(c.network.upstream_proxy.is_some());
    assert_eq!(c.profiles.allowed.unwrap().value.len(), 6);
    assert!(c.events.path.is_some() && c.metrics.listen.is_some());
}

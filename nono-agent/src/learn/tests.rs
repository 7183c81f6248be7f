use super::*;
use serde_json::json;

fn proxy(host: &str, port: u16) -> Value {
    json!({"source": "proxy", "hook": "connect", "verdict": "would-deny",
           "reason": "x", "host": host, "port": port})
}

fn kernel(addr: &str, port: u16, reason: &str, ty: &str) -> Value {
    json!({"source": "bpf", "hook": "connect4", "verdict": "would-deny",
           "reason": reason, "addr": addr, "port": port, "sock_type": ty})
}

fn base() -> Base {
    Base {
        extends: "default".into(),
        ..Default::default()
    }
}

fn learn(events: &[Value]) -> Observations {
    let mut o = Observations::default();
    for e in events {
        o.observe(e);
    }
    o
}

fn fs_none() -> Filesystem {
    Filesystem::Unavailable("not root".into())
}

/// The rendered profile must load as a profile (the same check as
/// `profile validate`), extending a built-in.
fn validates(text: &str) -> crate::profile::ResolvedProfile {
    let dir = tempfile_dir();
    let f = dir.join("learned.toml");
    std::fs::write(&f, text).unwrap();
    let ctx = crate::profile::ExpandContext::from_env();
    let r = crate::profile::validate_file(&f, &ctx);
    let _ = std::fs::remove_dir_all(&dir);
    r.unwrap_or_else(|e| panic!("learned profile does not validate: {e}\n{text}"))
}

fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "nono-learn-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn only_would_deny_records_teach() {
    let mut allow = proxy("a.example.com", 443);
    allow["verdict"] = json!("allow");
    let o = learn(&[allow, json!({"verdict": "deny", "source": "proxy"})]);
    assert_eq!(o, Observations::default());
}

#[test]
fn subdomains_collapse_to_the_registrable_domain_never_a_suffix() {
    let o = learn(&[
        proxy("a.example.com", 443),
        proxy("b.example.com", 443),
        proxy("b.example.com", 80),
        proxy("example.com", 443),
        proxy("solo.other.org", 443),
        // Under a public suffix with a dot (co.uk): the registrable domain
        // is shop.co.uk, never co.uk.
        proxy("a.shop.co.uk", 443),
        proxy("b.shop.co.uk", 443),
        // Two different registrable domains under co.uk stay apart.
        proxy("x.one.co.uk", 443),
        // Non-default port: its own rule.
        proxy("api.example.com", 8443),
    ]);
    let rules: Vec<String> = collapse(&o.names).into_iter().map(|e| e.rule).collect();
    assert_eq!(
        rules,
        [
            "*.example.com",
            "*.shop.co.uk",
            "api.example.com:8443",
            "example.com",
            "solo.other.org",
            "x.one.co.uk"
        ]
    );
    let e = &collapse(&o.names)[0];
    assert_eq!(e.count, 3);
    assert_eq!(e.names, ["a.example.com", "b.example.com"]);
    let text = render(&base(), &o, &fs_none());
    assert!(!text.contains("\"*.co.uk\""), "{text}");
    let p = validates(&text);
    let hosts: Vec<String> = p
        .network
        .allow_domains
        .iter()
        .map(|d| d.text.clone())
        .collect();
    assert!(hosts.contains(&"*.example.com".to_string()), "{hosts:?}");
}

#[test]
fn hostile_names_are_not_learned_and_cannot_inject() {
    let o = learn(&[
        proxy("evil.test\"\n[network]\nallow_cidrs = [\"0.0.0.0/0\"]", 443),
        proxy("a b.test", 80),
        proxy("EXAMPLE.com", 80), // not normalised: the proxy never sends it
        proxy("x.test#comment", 80),
        proxy("bad_name.test", 80),
        proxy("", 80),
        proxy("169.254.169.254", 80),
        proxy("[fe80::1]", 80),
        proxy("64:ff9b::a9fe:a9fe", 80),
        proxy("ok.test", 80),
        json!({"source": "proxy", "verdict": "would-deny", "host": "ok2.test", "port": 70000}),
        json!({"source": "proxy", "verdict": "would-deny", "host": 5, "port": 80}),
        json!({"source": "proxy", "verdict": "would-deny", "host": "ok.test", "port": 80,
               "addr": "169.254.169.254"}),
        kernel("169.254.169.254", 80, "not-allowed", "stream"),
    ]);
    assert_eq!(o.names.len(), 1, "{o:?}");
    assert!(o.addresses.is_empty(), "{o:?}");
    assert!(o.direct.is_empty(), "{o:?}");
    assert_eq!(o.rejected, 13);
    let text = render(&base(), &o, &fs_none());
    let p = validates(&text);
    assert_eq!(p.network.allow_domains.len(), 1);
    assert!(p.network.allow_cidrs.is_empty());
    assert!(text.contains("13 record(s)"), "{text}");
}

#[test]
fn addresses_ports_and_direct_destinations() {
    let mut private = proxy("db.test", 5432);
    private["addr"] = json!("10.1.2.3");
    let o = learn(&[
        proxy("198.51.100.7", 8080),
        proxy("2001:db8::7", 443),
        private,
        kernel("127.0.0.1", 41000, "loopback-port-not-allowed", "stream"),
        kernel("127.0.0.1", 41000, "loopback-port-not-allowed", "stream"),
        kernel("203.0.113.9", 53, "not-allowed", "dgram"),
    ]);
    let b = Base {
        loopback_ports: Some(vec![5432]),
        ..base()
    };
    let text = render(&b, &o, &fs_none());
    let p = validates(&text);
    let cidrs: Vec<String> = p
        .network
        .allow_cidrs
        .iter()
        .map(|c| c.text.clone())
        .collect();
    assert_eq!(
        cidrs,
        [
            "10.1.2.3/32:5432",
            "198.51.100.7/32:8080",
            "[2001:db8::7/128]:443"
        ]
    );
    assert_eq!(
        p.network.loopback,
        crate::profile::Loopback::Ports(vec![5432, 41000])
    );
    assert!(text.contains("41000,  # seen 2 times"), "{text}");
    assert!(
        text.contains("#   udp to 203.0.113.9:53 (seen once)"),
        "{text}"
    );
}

#[test]
fn loopback_any_base_is_never_narrowed_and_never_widened() {
    let o = learn(&[kernel(
        "127.0.0.1",
        41000,
        "loopback-port-not-allowed",
        "stream",
    )]);
    let text = render(&base(), &o, &fs_none());
    assert!(!text.contains("loopback = ["), "{text}");
    assert!(!text.contains("\"any\""), "{text}");
}

#[test]
fn deny_rules_of_the_base_are_reported_not_overridden() {
    let mut ev = proxy("blocked.test", 443);
    ev["rule"] = json!({"kind": "deny-domain", "text": "blocked.test", "origin": "x"});
    let o = learn(&[ev]);
    let text = render(&base(), &o, &fs_none());
    assert!(!text.contains("\"blocked.test\""), "{text}");
    assert!(text.contains("#   blocked.test:443 (seen once)"), "{text}");
    validates(&text);
}

#[test]
fn rendering_is_stable_whatever_the_order() {
    let evs = vec![
        proxy("b.example.com", 443),
        proxy("a.example.com", 443),
        proxy("z.test", 80),
        proxy("198.51.100.7", 8080),
        kernel("203.0.113.9", 53, "not-allowed", "dgram"),
    ];
    let mut rev = evs.clone();
    rev.reverse();
    assert_eq!(
        render(&base(), &learn(&evs), &fs_none()),
        render(&base(), &learn(&rev), &fs_none())
    );
}

#[test]
fn base_and_flags_are_quoted() {
    let b = Base {
        extends: "/tmp/we\"ird\nname.toml".into(),
        flag_domains: vec!["given.test".into()],
        flag_cidrs: vec!["198.51.100.0/24:443".into()],
        ..base()
    };
    let text = render(&b, &Observations::default(), &fs_none());
    let v: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(v["extends"].as_str(), Some("/tmp/we\"ird\nname.toml"));
    assert_eq!(
        v["network"]["allow_domains"][0].as_str(),
        Some("given.test")
    );
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the child puts in the host field, the profile parses,
        /// has exactly the keys learn writes, and every domain rule is a
        /// valid rule for a name the child really asked for.
        #[test]
        fn any_host_string_gives_a_valid_profile(
            hosts in proptest::collection::vec(".{0,40}", 0..8),
            ports in proptest::collection::vec(1u16.., 8),
        ) {
            let evs: Vec<Value> = hosts.iter().zip(&ports).map(|(h, p)| proxy(h, *p)).collect();
            let text = render(&base(), &learn(&evs), &fs_none());
            let v: toml::Value = toml::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            let top: Vec<&String> = v.as_table().unwrap().keys().collect();
            prop_assert!(top.iter().all(|k| ["extends", "description", "network", "filesystem"].contains(&k.as_str())), "{top:?}");
            let net = v["network"].as_table().unwrap();
            prop_assert!(net.keys().all(|k| k == "allow_domains" || k == "allow_cidrs"), "{net:?}");
            if let Some(domains) = net.get("allow_domains") {
                for d in domains.as_array().unwrap() {
                    let d = d.as_str().unwrap();
                    prop_assert!(d.parse::<DomainRule>().is_ok());
                    let host = d.split(':').next().unwrap();
                    prop_assert!(hosts.iter().any(|h| h == host || host.starts_with("*.")), "{d} from {hosts:?}");
                }
            }
        }
    }
}

mod files {
    use super::*;
    use std::path::PathBuf;

    fn map(paths: &[&str]) -> BTreeMap<PathBuf, u64> {
        paths.iter().map(|p| (PathBuf::from(p), 1)).collect()
    }

    fn base_fs() -> crate::profile::FsPolicy {
        crate::profile::FsPolicy {
            read: vec!["/usr".into(), "/etc".into()],
            write: vec!["/tmp".into()],
            exec: vec!["/usr".into()],
        }
    }

    #[test]
    fn only_paths_outside_the_base_and_writes_as_their_directory() {
        let fs = filesystem(
            &map(&[
                "/usr/lib/libc.so.6",
                "/tmp/x",
                "/home/u/.config/tool/conf.toml",
                "/srv/data/out/partial",
                "/home/u",
                "/",
            ]),
            &map(&[
                "/tmp/y",
                "/srv/data/out/result.json",
                "/home/u/.tool-history",
                "/etc/motd",
            ]),
            &base_fs(),
            Some(Path::new("/home/u")),
            Vec::new(),
        );
        let Filesystem::Learned {
            read,
            write,
            rejected,
            ..
        } = &fs
        else {
            panic!("{fs:?}")
        };
        assert_eq!(
            read.keys().collect::<Vec<_>>(),
            ["/home/u/.config/tool/conf.toml"]
        );
        // $HOME and /etc are too broad: the file itself.
        assert_eq!(
            write.keys().collect::<Vec<_>>(),
            ["/etc/motd", "/home/u/.tool-history", "/srv/data/out"]
        );
        assert_eq!(*rejected, 2, "listing / and $HOME");
        let text = render(&base(), &Observations::default(), &fs);
        let p = validates(&text);
        assert!(p.filesystem.write.contains(&PathBuf::from("/srv/data/out")));
    }

    #[test]
    fn hostile_file_names_are_not_learned() {
        let fs = filesystem(
            &map(&[
                "/srv/$HOME/x",
                "/srv/a\nwrite = [\"/\"]",
                "/proc/1/environ",
                "rel/path",
            ]),
            &map(&["/srv/${X}/f", "/srv/q\"uote/f"]),
            &base_fs(),
            None,
            vec!["/mnt/odd\nname: EXDEV".into()],
        );
        let text = render(&base(), &Observations::default(), &fs);
        let p = validates(&text);
        // The base's paths, then the one learned.
        assert_eq!(
            p.filesystem.write.last(),
            Some(&PathBuf::from("/srv/q\"uote")),
            "{text}"
        );
        assert!(!p.filesystem.write.contains(&PathBuf::from("/")), "{text}");
        assert!(text.contains("# Not learned: 5 path(s)"), "{text}");
        assert!(
            text.contains("# Not watched: /mnt/oddname: EXDEV"),
            "{text}"
        );
    }
}

#[test]
fn a_flood_of_names_is_bounded() {
    let mut o = Observations::default();
    for i in 0..(MAX_OBSERVED + 10) {
        o.observe(&proxy(&format!("n{i}.flood.test"), 443));
    }
    assert_eq!(o.names.len(), MAX_OBSERVED);
    assert_eq!(o.dropped, 10);
    let text = render(&base(), &o, &fs_none());
    // Collapsed: one wildcard for the flood.
    assert!(text.contains("\"*.flood.test\""), "{}", &text[..400]);
    assert!(text.contains("10 record(s) past 65536"), "{}", &text[..400]);
}

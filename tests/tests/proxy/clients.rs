//! Real clients: Python urllib (HTTP, HTTPS) and git over HTTPS.

use serde_json::Value;

use nono_tests::proxylab::{ProxyLab, Sandbox};

#[test]
fn python_urllib_http_and_https() {
    let lab = ProxyLab::new();
    let sb = Sandbox::allow(&["allowed.test", "*.wild.test"]);
    let ca = lab.pki.ca.display().to_string();
    let (v, out) = lab.python(
        &sb,
        &[
            "urllib",
            "--cafile",
            &ca,
            "http://allowed.test/case/py-http",
            "https://allowed.test/case/py-https",
            "https://a.wild.test/case/py-https-wild",
            "http://evil.test/case/py-http-denied",
            "https://evil.test/case/py-https-denied",
        ],
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    let r = v.as_array().expect("list of results");
    let body = |i: usize| -> Value {
        serde_json::from_str(r[i]["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
    };
    assert_eq!(r[0]["status"], 200, "{v:#}");
    assert_eq!(body(0)["host"], "allowed.test", "{v:#}");
    assert_eq!(r[1]["status"], 200, "{v:#}");
    assert_eq!(body(1)["tls"], true, "{v:#}");
    assert_eq!(body(1)["sni"], "allowed.test", "{v:#}");
    assert_eq!(r[2]["status"], 200, "{v:#}");
    assert_eq!(body(2)["sni"], "a.wild.test", "{v:#}");
    assert_eq!(r[3]["status"], 403, "{v:#}");
    assert!(
        r[3]["body"]
            .as_str()
            .unwrap_or_default()
            .contains("evil.test:80 is not allowed by any allow-domain rule"),
        "{v:#}"
    );
    assert!(
        r[4]["error"].as_str().unwrap_or_default().contains("403"),
        "urllib should report the refused tunnel: {v:#}"
    );
    assert!(lab.requests_matching("denied").is_empty());
    assert_eq!(lab.requests_matching("/case/py-").len(), 3);
}

#[test]
fn git_clone_over_https() {
    let lab = ProxyLab::new();
    let sb = Sandbox::allow(&["git.test"]);
    let dest = lab.scratch("clone");
    let ok = dest.join("ok").display().to_string();
    let bad = dest.join("bad").display().to_string();
    let script = format!(
        "git clone -q https://git.test/repo.git {ok} && cat {ok}/README; \
         echo CLONE_OK=$?; \
         git clone -q https://evil.test/repo.git {bad}; echo CLONE_BAD=$?"
    );
    let out = lab.exec(&sb, &["sh", "-c", &script]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout.contains(&lab.repo_marker) && out.stdout.contains("CLONE_OK=0"),
        "the clone should succeed and contain the marker: {}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("CLONE_BAD=0") && out.stderr.contains("403"),
        "cloning from a refused host must fail with the proxy's 403: {}",
        out.describe()
    );
    // Smart HTTP: ref advertisement and upload-pack went through, all with
    // SNI git.test; nothing for evil.test.
    let reqs = lab.requests_matching("/repo.git/");
    assert!(
        reqs.iter().any(|r| r["target"]
            .as_str()
            .unwrap()
            .contains("service=git-upload-pack")),
        "{reqs:#?}"
    );
    assert!(
        reqs.iter().any(|r| r["method"] == "POST"),
        "no git-upload-pack POST: {reqs:#?}"
    );
    assert!(reqs.iter().all(|r| r["sni"] == "git.test"), "{reqs:#?}");
}

//! What the lab prepares on disk: a test CA with a server certificate, and
//! a bare git repository for the smart-HTTP server.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sys::{self, CmdOutput};

use super::require_tool;

/// A test CA and a server certificate signed by it.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn run_in(dir: &Path, program: &str, args: &[&str]) -> CmdOutput {
    let out = sys::run_timeout(
        Command::new(program).current_dir(dir).args(args),
        sys::CMD_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        out.describe()
    );
    out
}

impl Pki {
    /// Generates a CA and a server certificate for `names` and `ips` in `dir`
    /// with the openssl command-line tool (P-256, valid for a week).
    pub fn generate(dir: &Path, names: &[&str], ips: &[&str]) -> Pki {
        require_tool("openssl", "openssl");
        fs::create_dir_all(dir).expect("pki dir");
        run_in(
            dir,
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "7",
                "-subj",
                "/CN=nono-tests throwaway CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        run_in(
            dir,
            "openssl",
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=allowed.test",
            ],
        );
        let san: Vec<String> = names
            .iter()
            .map(|n| format!("DNS:{n}"))
            .chain(ips.iter().map(|i| format!("IP:{i}")))
            .collect();
        fs::write(
            dir.join("server.ext"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\n\
                 authorityKeyIdentifier=keyid,issuer\nsubjectAltName={}\n",
                san.join(",")
            ),
        )
        .expect("write server.ext");
        run_in(
            dir,
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "7",
                "-extfile",
                "server.ext",
            ],
        );
        Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

/// Creates a bare repository `<root>/repo.git` with one commit whose
/// `README` contains `marker`, ready for `git http-backend`.
pub fn make_repo(root: &Path, marker: &str) {
    require_tool("git", "git");
    let work = root.join("work");
    fs::create_dir_all(&work).expect("repo work dir");
    let git = |dir: &Path, args: &[&str]| {
        let out = sys::run_timeout(
            Command::new("git")
                .current_dir(dir)
                .env("HOME", root)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_AUTHOR_NAME", "nono tests")
                .env("GIT_AUTHOR_EMAIL", "tests@nono.test")
                .env("GIT_COMMITTER_NAME", "nono tests")
                .env("GIT_COMMITTER_EMAIL", "tests@nono.test")
                .args(args),
            sys::CMD_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            out.describe()
        );
    };
    git(&work, &["init", "-q", "-b", "main"]);
    fs::write(work.join("README"), format!("{marker}\n")).expect("README");
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "test repository"]);
    git(root, &["clone", "-q", "--bare", "work", "repo.git"]);
    git(&root.join("repo.git"), &["update-server-info"]);
}

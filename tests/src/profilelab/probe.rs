//! The Python probe: one process runs a list of operations and reports
//! one JSON line (errno included) per operation.

use serde_json::Value;

use crate::sys::CmdOutput;

use super::PYTHON;

/// Runs each argument `OP=ARG[,ARG2]` in order and prints one JSON line
/// `{"op","arg","ok","errno","out"}` per operation. `$VAR` in arguments is
/// expanded from the sandbox's environment; `AGENTPID` is replaced by the
/// value of an `agentpid=N` argument (appended by [`Exec::probe_with_agent_pid`]).
pub const PROBE_PY: &str = r#"
import base64, ctypes, json, os, socket, subprocess, sys, urllib.parse
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
agent = None
for a in sys.argv[1:]:
    if a.startswith("agentpid="):
        agent = a.split("=", 1)[1]

class Fail(Exception):
    pass

def sub(x):
    if agent is not None:
        x = x.replace("AGENTPID", agent)
    return os.path.expandvars(x)

def greet(s):
    s.settimeout(5)
    try:
        return s.recv(16).decode(errors="replace")
    finally:
        s.close()

def run(op, a):
    if op == "write":
        fd = os.open(a[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, (a[1] if len(a) > 1 else "nono").encode())
        finally:
            os.close(fd)
        return ""
    if op == "writeval":
        fd = os.open(os.path.normpath(a[0]), os.O_WRONLY)
        try:
            os.write(fd, a[1].encode())
        finally:
            os.close(fd)
        return ""
    if op == "openw":
        os.close(os.open(os.path.normpath(a[0]), os.O_WRONLY))
        return ""
    if op == "read":
        with open(a[0], "rb") as f:
            return f.read(300).decode(errors="replace")
    if op == "mkdir":
        p = os.path.normpath(a[0])
        os.mkdir(p)
        os.rmdir(p)
        return ""
    if op == "unlink":
        os.unlink(os.path.normpath(a[0]))
        return ""
    if op == "exec":
        p = subprocess.run(a, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        out = p.stdout.decode(errors="replace")
        if p.returncode != 0:
            raise Fail("exit %d: %s" % (p.returncode, out))
        return out
    if op == "tcp":
        s = socket.create_connection(("127.0.0.1", int(a[0])), timeout=5)
        return greet(s)
    if op == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect("\0" + a[0][1:] if a[0].startswith("@") else a[0])
        return greet(s)
    if op == "proxy":
        u = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
        s = socket.create_connection(("127.0.0.1", u.port), timeout=5)
        s.settimeout(10)
        auth = base64.b64encode(("%s:%s" % (u.username, u.password)).encode()).decode()
        s.sendall(("GET http://%s/ HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n"
                   "Connection: close\r\n\r\n" % (a[0], a[0], auth)).encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        return data.split(b"\r\n", 1)[0].decode(errors="replace")
    if op == "ptrace":
        pid = int(a[0])
        if libc.ptrace(16, pid, None, None) == -1:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        try:
            os.waitpid(pid, 0x40000000)
        except OSError:
            pass
        libc.ptrace(17, pid, None, None)
        return "ATTACHED"
    if op == "kill":
        os.kill(int(a[0]), int(a[1]) if len(a) > 1 else 0)
        return ""
    if op == "getuid":
        return "%d %d" % (os.getuid(), os.geteuid())
    if op == "nnp":
        return str(libc.prctl(39, 0, 0, 0, 0))
    raise Fail("unknown op " + op)

for arg in sys.argv[1:]:
    if arg.startswith("agentpid="):
        continue
    op, _, rest = arg.partition("=")
    parts = [sub(x) for x in rest.split(",")] if rest else []
    try:
        out = run(op, parts)
        r = {"ok": True, "errno": None, "out": out}
    except OSError as e:
        r = {"ok": False, "errno": e.errno, "out": str(e)}
    except Exception as e:
        r = {"ok": False, "errno": None, "out": repr(e)}
    r.update({"op": op, "arg": ",".join(parts)})
    print(json.dumps(r), flush=True)
"#;

/// The argv that runs [`PROBE_PY`] with `ops`.
pub fn probe_argv(ops: &[String]) -> Vec<String> {
    let mut v = vec![
        PYTHON.to_string(),
        "-I".to_string(),
        "-c".to_string(),
        PROBE_PY.to_string(),
    ];
    v.extend(ops.iter().cloned());
    v
}

/// One operation's outcome.
#[derive(Debug, Clone)]
pub struct OpResult {
    pub op: String,
    /// The arguments after expansion, comma-separated.
    pub arg: String,
    pub ok: bool,
    pub errno: Option<i32>,
    pub out: String,
}

/// The probe's results, in the order of the operations, and the agent's output.
#[derive(Debug)]
pub struct Probe {
    pub results: Vec<OpResult>,
    pub out: CmdOutput,
}

impl Probe {
    pub(super) fn parse(out: CmdOutput, n: usize) -> Probe {
        let results: Vec<OpResult> = out
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .filter(|v| v.get("op").is_some())
            .map(|v| OpResult {
                op: v["op"].as_str().unwrap_or_default().to_string(),
                arg: v["arg"].as_str().unwrap_or_default().to_string(),
                ok: v["ok"].as_bool().unwrap_or(false),
                errno: v["errno"].as_i64().map(|e| e as i32),
                out: v["out"].as_str().unwrap_or_default().to_string(),
            })
            .collect();
        assert_eq!(
            results.len(),
            n,
            "the probe reported {} results for {n} operations (did it start?)\n{}",
            results.len(),
            out.describe()
        );
        Probe { results, out }
    }

    /// The i-th result; panics unless it succeeded.
    pub fn ok(&self, i: usize, what: &str) -> &OpResult {
        let r = &self.results[i];
        assert!(
            r.ok,
            "{what}: expected {} {} to succeed, got errno {:?} ({})\n{}",
            r.op,
            r.arg,
            r.errno,
            r.out,
            self.out.describe()
        );
        r
    }

    /// The i-th result; panics unless it failed with one of `errnos`
    /// (any failure with an errno if `errnos` is empty).
    pub fn refused(&self, i: usize, errnos: &[i32], what: &str) -> &OpResult {
        let r = &self.results[i];
        let matches = match r.errno {
            Some(e) => errnos.is_empty() || errnos.contains(&e),
            None => false,
        };
        assert!(
            !r.ok && matches,
            "{what}: expected {} {} to fail with errno in {errnos:?}, got ok={} errno={:?} ({})\n{}",
            r.op,
            r.arg,
            r.ok,
            r.errno,
            r.out,
            self.out.describe()
        );
        r
    }
}

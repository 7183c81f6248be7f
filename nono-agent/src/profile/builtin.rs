//! Profiles compiled into the binary from the repository's `profiles/`
//! directory, so that `--profile claude-code` works without any installed
//! file and cannot be broken by a missing `/etc` entry.

/// (name, TOML text), in the order `list` shows them before sorting.
const BUILTINS: &[(&str, &str)] = &[
    ("default", include_str!("../../../profiles/default.toml")),
    (
        "claude-code",
        include_str!("../../../profiles/claude-code.toml"),
    ),
    ("codex", include_str!("../../../profiles/codex.toml")),
    ("ci-rust", include_str!("../../../profiles/ci-rust.toml")),
    ("ci-node", include_str!("../../../profiles/ci-node.toml")),
    (
        "ci-python",
        include_str!("../../../profiles/ci-python.toml"),
    ),
];

/// The built-in profile `name`.
pub(super) fn get(name: &str) -> Option<&'static str> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Every built-in name.
pub(super) fn names() -> Vec<&'static str> {
    BUILTINS.iter().map(|(n, _)| *n).collect()
}

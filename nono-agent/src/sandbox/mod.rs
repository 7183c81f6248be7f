//! One sandbox: its cgroup, its owner lock, its child, and their teardown.

pub mod cabundle;
pub mod cgroup;
pub mod child;
pub mod command_path;
pub mod daemons;
pub mod exec_check;
pub mod fsaudit;
pub mod fswatch;
pub mod hide;
pub mod landlock;
pub mod netns;
pub mod privileges;
pub mod protect;
pub mod pty;
pub mod reap;
pub mod registry;
pub mod relay;
pub mod sockdiag;
pub mod spawn;
pub mod sweep;
pub mod teardown;
pub mod users;

//! Shared by the bench binaries: argument parsing, output (human or JSON lines), data.
//!
//! Every bench accepts `--json` (or `STEADYGRAD_BENCH_JSON=1`) to print one JSON object
//! per measurement, so figures can be diffed between commits. `cargo bench` passes its
//! own `--bench` flag; unknown flags are ignored.

#![allow(dead_code)]

use std::fmt::Write as _;

pub struct Args {
    pub json: bool,
    args: Vec<String>,
}

impl Args {
    pub fn parse() -> Args {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let json = args.iter().any(|a| a == "--json")
            || std::env::var("STEADYGRAD_BENCH_JSON").is_ok_and(|v| !v.is_empty() && v != "0");
        Args { json, args }
    }

    /// `--name VALUE` or `--name=VALUE`, else the environment variable `env`.
    pub fn value(&self, name: &str, env: &str) -> Option<String> {
        let flag = format!("--{name}");
        let mut it = self.args.iter();
        while let Some(a) = it.next() {
            if *a == flag {
                return it.next().cloned();
            }
            if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                return Some(v.to_string());
            }
        }
        std::env::var(env).ok().filter(|v| !v.is_empty())
    }

    pub fn number(&self, name: &str, env: &str, default: usize) -> usize {
        self.value(name, env).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("--{name}: expected a number, got '{v}'"))
        })
    }

    pub fn flag(&self, name: &str) -> bool {
        self.args.iter().any(|a| *a == format!("--{name}"))
    }
}

/// A JSON value small enough to format by hand (no serde dependency for benches).
pub enum V {
    S(String),
    F(f64),
    I(u64),
    B(bool),
}

impl From<&str> for V {
    fn from(s: &str) -> V {
        V::S(s.to_string())
    }
}
impl From<String> for V {
    fn from(s: String) -> V {
        V::S(s)
    }
}
impl From<f64> for V {
    fn from(x: f64) -> V {
        V::F(x)
    }
}
impl From<usize> for V {
    fn from(x: usize) -> V {
        V::I(x as u64)
    }
}
impl From<bool> for V {
    fn from(x: bool) -> V {
        V::B(x)
    }
}

pub fn json_line(fields: &[(&str, V)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "\"{k}\":");
        match v {
            V::S(t) => {
                s.push('"');
                for ch in t.chars() {
                    match ch {
                        '"' => s.push_str("\\\""),
                        '\\' => s.push_str("\\\\"),
                        c if (c as u32) < 0x20 => {
                            let _ = write!(s, "\\u{:04x}", c as u32);
                        }
                        c => s.push(c),
                    }
                }
                s.push('"');
            }
            V::F(x) if x.is_finite() => {
                let _ = write!(s, "{x:.4}");
            }
            V::F(_) => s.push_str("null"),
            V::I(x) => {
                let _ = write!(s, "{x}");
            }
            V::B(x) => {
                let _ = write!(s, "{x}");
            }
        }
    }
    s.push('}');
    s
}

/// The commit being measured (with `-dirty` for uncommitted changes), so JSON lines from
/// different builds can be told apart.
pub fn git_commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]) else {
        return String::new();
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    }
}

// Not every bench uses it; each compiles this module for itself.
#[allow(unused_imports)]
pub use steadygrad::bench::noise;

/// CPU seconds (user + system) this process has used, from `/proc` (Linux), else `None`.
/// On a software adapter the device work runs on the host's threads, so GFLOP per
/// CPU-second is far less sensitive than wall time to other load on a shared machine.
pub fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let mut after = stat[stat.rfind(')')? + 2..].split(' ');
    // utime and stime are fields 14 and 15, i.e. 12th and 13th after `(comm)`.
    let utime: f64 = after.nth(11)?.parse().ok()?;
    let stime: f64 = after.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI Rust supports.
    Some((utime + stime) / 100.0)
}

/// The bench's numeric command-line arguments (others, like cargo's `--bench`, are
/// skipped), as `arg(i, default)`.
pub fn numeric_args() -> impl Fn(usize, usize) -> usize {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    move |i, default| args.get(i).copied().unwrap_or(default)
}

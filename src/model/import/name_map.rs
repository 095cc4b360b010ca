//! `--name-map`: a user's table of exact names and `{i}` pattern rules from a file's
//! tensor names to steadygrad's.

use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// A rule of a [`NameMap`]: literal text and `{name}` placeholders that stand for a
/// run of digits (a layer index).
#[derive(Clone, Debug)]
enum Piece {
    Text(String),
    Index(String),
}

fn parse_pattern(s: &str) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .with_context(|| format!("'{s}': '{{' without a closing '}}'"))?;
        let name = &rest[open + 1..open + close];
        ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "'{s}': placeholder '{{{name}}}' must be a name such as {{i}}"
        );
        // Two placeholders in a row could split a run of digits any way.
        ensure!(
            !matches!(pieces.last(), Some(Piece::Index(_))),
            "'{s}': two placeholders need text between them"
        );
        pieces.push(Piece::Index(name.to_string()));
        rest = &rest[open + close + 1..];
    }
    ensure!(!rest.contains('}'), "'{s}': '}}' without an opening '{{'");
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(pieces)
}

/// Matches `name` against `pattern`, returning the placeholders' digits.
fn match_pattern(pattern: &[Piece], name: &str) -> Option<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    let mut rest = name;
    for piece in pattern {
        match piece {
            Piece::Text(t) => rest = rest.strip_prefix(t.as_str())?,
            Piece::Index(v) => {
                let n = rest.bytes().take_while(u8::is_ascii_digit).count();
                if n == 0 {
                    return None;
                }
                let digits = &rest[..n];
                // The same placeholder twice must stand for the same index.
                if vars.get(v).is_some_and(|d: &String| d != digits) {
                    return None;
                }
                vars.insert(v.clone(), digits.to_string());
                rest = &rest[n..];
            }
        }
    }
    rest.is_empty().then_some(vars)
}

/// A user-given renaming, read from a TOML table of `"their name" = "our name"` entries.
/// An entry is either exact (`"encoder.fc1.weight" = "layers.0.linear.weight"`) or a
/// rule with placeholders (`"encoder.{i}.fc.weight" = "layers.{i}.linear.weight"`),
/// where `{i}` matches a layer index and is written into the target. Exact entries win
/// over rules; a name that two rules match is an error, as it would be ambiguous.
#[derive(Clone, Debug, Default)]
pub struct NameMap {
    exact: BTreeMap<String, String>,
    rules: Vec<(String, Vec<Piece>, Vec<Piece>)>,
}

impl NameMap {
    /// Parses a TOML table of string entries.
    pub fn parse(toml_text: &str) -> Result<NameMap> {
        let table: toml::Table = toml::from_str(toml_text).context("the name map is not TOML")?;
        let mut map = NameMap::default();
        for (from, to) in table {
            let to = to.as_str().with_context(|| {
                format!("name map entry '{from}' must be a string (a steadygrad tensor name)")
            })?;
            if !from.contains('{') {
                ensure!(
                    !to.contains('{'),
                    "name map entry '{from}' = '{to}': the target has a placeholder the name \
                     lacks"
                );
                map.exact.insert(from, to.to_string());
                continue;
            }
            let pattern = parse_pattern(&from)?;
            let target = parse_pattern(to)?;
            for piece in &target {
                if let Piece::Index(v) = piece {
                    ensure!(
                        pattern
                            .iter()
                            .any(|p| matches!(p, Piece::Index(w) if w == v)),
                        "name map entry '{from}' = '{to}': '{{{v}}}' is not in the name"
                    );
                }
            }
            map.rules.push((from, pattern, target));
        }
        Ok(map)
    }

    /// Reads a name map file (TOML).
    pub fn load(path: &Path) -> Result<NameMap> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the name map '{}'", path.display()))?;
        NameMap::parse(&text).with_context(|| format!("name map '{}'", path.display()))
    }

    /// The steadygrad name for `name`, or `None` when no entry matches it.
    pub fn rename(&self, name: &str) -> Result<Option<String>> {
        if let Some(to) = self.exact.get(name) {
            return Ok(Some(to.clone()));
        }
        let mut found: Option<(&str, String)> = None;
        for (from, pattern, target) in &self.rules {
            let Some(vars) = match_pattern(pattern, name) else {
                continue;
            };
            if let Some((other, _)) = found {
                bail!("'{name}' matches two name map rules, '{other}' and '{from}'");
            }
            let renamed = target
                .iter()
                .map(|p| match p {
                    Piece::Text(t) => t.clone(),
                    // Written without leading zeros, as steadygrad names its layers.
                    Piece::Index(v) => vars[v]
                        .parse::<u64>()
                        .map_or_else(|_| vars[v].clone(), |n| n.to_string()),
                })
                .collect();
            found = Some((from, renamed));
        }
        Ok(found.map(|(_, n)| n))
    }
}

//! Naming the key behind a config type error. serde reports a wrong-typed value
//! deserialized from a TOML table as `invalid type: string "big", expected usize`
//! without saying where it was; this finds the key that holds that value (and
//! whose removal changes the error) and says `train.batch_size: expected an
//! integer, got "big"`.

/// Rewrites serde's `message` about `table` to name the key, when one can be
/// found; `error_of` deserializes a table and returns its error message, if any.
pub(crate) fn name_the_key(
    table: &toml::Table,
    message: &str,
    error_of: &dyn Fn(&toml::Table) -> Option<String>,
) -> String {
    let Some(found) = Found::parse(message) else {
        return message.to_string();
    };
    let mut leaves = Vec::new();
    collect_leaves(
        &mut Vec::new(),
        &toml::Value::Table(table.clone()),
        &mut leaves,
    );
    for (path, value) in leaves.iter().filter(|(_, v)| found.matches(v)) {
        let mut without = table.clone();
        remove(&mut without, path);
        if error_of(&without).as_deref() != Some(message) {
            let key = path.join(".");
            return match &found {
                Found::Type { expected, .. } => {
                    format!("{key}: expected {}, got {value}", friendly(expected))
                }
                Found::Value { expected, .. } => {
                    format!("{key}: expected {}, got {value}", friendly_value(expected))
                }
                Found::Variant { .. } => format!("{key}: {message}"),
            };
        }
    }
    message.to_string()
}

/// What serde said was wrong.
enum Found {
    /// `invalid type: <unexpected>, expected <expected>`.
    Type {
        unexpected: String,
        expected: String,
    },
    /// `invalid value: <unexpected>, expected <expected>`.
    Value {
        unexpected: String,
        expected: String,
    },
    /// ``unknown variant `x`, expected …``.
    Variant { name: String },
}

impl Found {
    fn parse(message: &str) -> Option<Found> {
        if let Some(rest) = message.strip_prefix("unknown variant `") {
            return Some(Found::Variant {
                name: rest.split('`').next()?.to_string(),
            });
        }
        let (kind, rest) = message.split_once(": ")?;
        let (unexpected, expected) = rest.rsplit_once(", expected ")?;
        let (unexpected, expected) = (unexpected.to_string(), expected.to_string());
        match kind {
            "invalid type" => Some(Found::Type {
                unexpected,
                expected,
            }),
            "invalid value" => Some(Found::Value {
                unexpected,
                expected,
            }),
            _ => None,
        }
    }

    /// Whether `value` is what serde's `Unexpected` described.
    fn matches(&self, value: &toml::Value) -> bool {
        let unexpected = match self {
            Found::Type { unexpected, .. } | Found::Value { unexpected, .. } => unexpected,
            Found::Variant { name } => return matches!(value, toml::Value::String(s) if s == name),
        };
        match value {
            toml::Value::String(s) => *unexpected == format!("string {s:?}"),
            toml::Value::Integer(i) => *unexpected == format!("integer `{i}`"),
            toml::Value::Float(_) => unexpected.starts_with("floating point"),
            toml::Value::Boolean(b) => *unexpected == format!("boolean `{b}`"),
            toml::Value::Array(_) => unexpected == "sequence",
            toml::Value::Table(_) => unexpected == "map",
            toml::Value::Datetime(_) => {
                unexpected.starts_with("map") || unexpected.contains("date")
            }
        }
    }
}

fn friendly(expected: &str) -> String {
    match expected {
        "usize" | "u64" | "u32" | "u16" | "u8" | "i64" | "i32" => "an integer".into(),
        "f64" | "f32" => "a number".into(),
        other => other.to_string(),
    }
}

fn friendly_value(expected: &str) -> String {
    match expected {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a non-negative integer".into(),
        other => friendly(other),
    }
}

fn collect_leaves(
    path: &mut Vec<String>,
    value: &toml::Value,
    out: &mut Vec<(Vec<String>, toml::Value)>,
) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                path.push(k.clone());
                collect_leaves(path, v, out);
                path.pop();
            }
            // A table given where a scalar was expected is itself a candidate.
            if !path.is_empty() {
                out.push((path.clone(), value.clone()));
            }
        }
        other => out.push((path.clone(), other.clone())),
    }
}

fn remove(table: &mut toml::Table, path: &[String]) {
    match path {
        [] => {}
        [last] => {
            table.remove(last);
        }
        [first, rest @ ..] => {
            if let Some(toml::Value::Table(t)) = table.get_mut(first) {
                remove(t, rest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(t: &toml::Table) -> Option<String> {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Train {
            #[serde(default)]
            batch_size: usize,
            #[serde(default)]
            lr: f64,
        }
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Root {
            kind: String,
            train: Train,
        }
        toml::Value::Table(t.clone())
            .try_into::<Root>()
            .err()
            .map(|e| e.message().to_string())
    }

    #[test]
    fn names_the_key_of_a_wrong_type() {
        for (text, want) in [
            (
                "kind = \"big\"\n[train]\nbatch_size = \"big\"",
                "train.batch_size: expected an integer, got \"big\"",
            ),
            (
                "kind = \"a\"\n[train]\nlr = \"fast\"",
                "train.lr: expected a number, got \"fast\"",
            ),
            (
                "kind = \"a\"\n[train]\nbatch_size = -3",
                "train.batch_size: expected a non-negative integer, got -3",
            ),
            (
                "kind = \"a\"\n[train]\nbatch_size = true",
                "train.batch_size: expected an integer, got true",
            ),
        ] {
            let t: toml::Table = text.parse().unwrap();
            let msg = error_of(&t).unwrap();
            assert_eq!(name_the_key(&t, &msg, &error_of), want, "{text}");
        }
    }
}

//! Run configurations as JSON files: a user's file laid over the defaults,
//! flattened to dotted fields, and compared (what a run records about itself
//! and checks on resume).

/// `user` laid over `defaults`, field by field: a nested object merges into
/// the default object of the same name, so a partial block (`{"train":
/// {"checkpoint_every": 2}}`) changes the fields it names and keeps the
/// documented defaults of the others; any other value (numbers, strings,
/// arrays, `null`) replaces the default. An object whose `"kind"` tag names
/// another variant than the default's (e.g. `{"head": {"kind": "cosine"}}`
/// over an MLP head) replaces it whole, since the default's fields belong to
/// the other variant.
///
/// Deserialize the result into the config type to get its own checks
/// (unknown fields, types).
pub fn layered(defaults: serde_json::Value, user: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (defaults, user) {
        (Value::Object(mut base), Value::Object(over)) => {
            let other_kind = matches!((base.get("kind"), over.get("kind")), (Some(a), Some(b)) if a != b);
            if other_kind {
                return Value::Object(over);
            }
            for (key, value) in over {
                let merged = match base.remove(&key) {
                    Some(default) => layered(default, value),
                    None => value,
                };
                base.insert(key, merged);
            }
            Value::Object(base)
        }
        (_, user) => user,
    }
}

/// A JSON value's leaves by dotted path (`{"train": {"steps": 3}}` →
/// `train.steps: 3`); arrays and `null` are leaves. What a run records
/// about itself and compares on resume.
pub fn flatten(value: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut std::collections::BTreeMap<String, serde_json::Value>) {
        match v {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, child, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf.clone());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// The fields whose values differ between two flattened configs (or that
/// one side lacks), as `name: a -> b`, skipping `ignore`d names and any
/// name under an ignored prefix.
pub fn differing_fields(
    a: &std::collections::BTreeMap<String, serde_json::Value>,
    b: &std::collections::BTreeMap<String, serde_json::Value>,
    ignore: &[&str],
) -> Vec<String> {
    let ignored = |k: &str| ignore.iter().any(|i| k == *i || k.starts_with(&format!("{i}.")));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).filter(|k| !ignored(k)).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&serde_json::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).map(|k| format!("{k}: {} -> {}", show(a.get(k)), show(b.get(k)))).collect()
}

//! Merging a user's `podTemplate` onto a generated pod.
//!
//! Objects merge key by key; lists of objects that carry a `name` merge item by item on that
//! name (so an env var or the server container can be amended) and other items are appended
//! (tolerations, sidecars), so an empty list amends nothing; lists of scalars and all other
//! values are replaced.

use serde_json::Value;

/// Merges `overlay` onto `base` in place.
pub fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(key) {
                    Some(existing) if !value.is_null() => merge(existing, value),
                    _ => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(base), Value::Array(overlay))
            if overlay.iter().all(Value::is_object) && base.iter().all(Value::is_object) =>
        {
            for item in overlay {
                let same_name = item.get("name").and_then(|name| {
                    base.iter_mut()
                        .find(|existing| existing.get("name") == Some(name))
                });
                match same_name {
                    Some(existing) => merge(existing, item),
                    None => base.push(item.clone()),
                }
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn named_items_merge_and_others_append() {
        let mut pod = json!({
            "metadata": {"labels": {"a": "1"}},
            "spec": {
                "containers": [{"name": "server", "image": "x", "env": [{"name": "A", "value": "1"}], "args": ["a", "b"]}],
                "tolerations": [{"key": "t1"}]
            }
        });
        merge(
            &mut pod,
            &json!({
                "metadata": {"labels": {"b": "2"}},
                "spec": {
                    "nodeSelector": {"disk": "ssd"},
                    "containers": [
                        {"name": "server", "env": [{"name": "A", "value": "9"}, {"name": "B", "value": "2"}], "args": ["c"]},
                        {"name": "sidecar", "image": "busybox"}
                    ],
                    "tolerations": [{"key": "t2"}]
                }
            }),
        );
        assert_eq!(pod["metadata"]["labels"], json!({"a": "1", "b": "2"}));
        assert_eq!(pod["spec"]["nodeSelector"], json!({"disk": "ssd"}));
        let containers = pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        assert_eq!(containers[0]["image"], "x");
        assert_eq!(
            containers[0]["env"],
            json!([{"name": "A", "value": "9"}, {"name": "B", "value": "2"}])
        );
        assert_eq!(
            containers[0]["args"],
            json!(["c"]),
            "scalar lists are replaced"
        );
        assert_eq!(containers[1]["name"], "sidecar");
        assert_eq!(
            pod["spec"]["tolerations"],
            json!([{"key": "t1"}, {"key": "t2"}])
        );
    }

    #[test]
    fn an_empty_list_amends_no_item_of_a_list_of_objects_and_empties_a_list_of_scalars() {
        let mut pod = json!({"containers": [{"name": "server"}], "args": ["a"], "tolerations": []});
        merge(
            &mut pod,
            &json!({"containers": [], "args": [], "tolerations": [{"key": "t"}]}),
        );
        assert_eq!(
            pod,
            json!({"containers": [{"name": "server"}], "args": [], "tolerations": [{"key": "t"}]})
        );
    }

    #[test]
    fn null_and_new_keys_replace() {
        let mut base = json!({"a": {"b": 1}, "c": 2});
        merge(&mut base, &json!({"a": null, "d": [1]}));
        assert_eq!(base, json!({"a": null, "c": 2, "d": [1]}));
    }
}

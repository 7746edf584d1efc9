//! `loom apply` bodies (`ApplyRequest`, a client's JSON) and declared weavers: any JSON is a
//! clear error or declarations whose specs are within bounds, and every plan of them names
//! each declared weaver exactly once.

use super::*;
use loom_core::api::ApplyRequest;
use loom_core::declare::{Existing, Origin, declared_weavers, plan};

/// A `[weavers.NAME]` table of arbitrary JSON values under the keys a declaration has.
fn decl_json() -> impl Strategy<Value = serde_json::Value> {
    let key = select(vec![
        "enable",
        "repo",
        "branch",
        "image",
        "prompt",
        "prompt_file",
        "model",
        "command",
        "memory",
        "cpus",
        "tasks",
        "ttl",
        "disk",
        "log_size",
        "network",
        "restart",
        "env",
        "egress",
        "agent",
    ]);
    prop::collection::btree_map(key, requests::json_value(), 0..8)
        .prop_map(|m| serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn any_apply_body_is_ok_or_a_clear_error(
        weavers in prop::collection::btree_map("[a-z][a-z0-9-]{0,8}|[A-Z_ ]{1,4}", decl_json(), 0..4),
        source in "[ -~]{0,16}",
    ) {
        let body = serde_json::json!({ "source": source, "weavers": weavers });
        let Ok(req) = serde_json::from_value::<ApplyRequest>(body) else { return Ok(()) };
        prop_assert_eq!(Origin::apply(&req.source).is_ok(), !req.source.is_empty());
        match declared_weavers(&req.weavers, &WeaverDefaults::default(), |_| Ok("prompt".into())) {
            Ok(ws) => {
                for w in &ws {
                    check_spec(&w.spec)?;
                    prop_assert_eq!(&w.spec.name, &w.name);
                    prop_assert_eq!(w.hash.len(), 64);
                }
                let p = plan(&Origin::Config, ws.iter().map(|w| (w.name.as_str(), w.hash.as_str())), &[] as &[Existing]);
                prop_assert_eq!(p.create.len(), ws.len());
            }
            Err(e) => prop_assert!(e.to_string().starts_with("[weavers."), "{}", e),
        }
    }
}

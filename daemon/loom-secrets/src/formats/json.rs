//! JSON store (also the envelope of the binary store). Objects keep their key order, which
//! the MAC depends on; numbers follow sops' rule (int when it fits in i64, else float).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::tree::{Item, KeySet, ListItem, Value};

pub(crate) fn parse(text: &str) -> Result<Vec<Item>, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = de::Deserialize::deserialize(&mut de)
        .map_err(|e: serde_json::Error| format!("JSON error at line {} column {}: {e}", e.line(), e.column()))?;
    de.end().map_err(|e| format!("JSON error at line {}: trailing data: {e}", e.line()))?;
    match v {
        JsonValue(Value::Map(items)) => Ok(items),
        _ => Err("the JSON document must be an object".into()),
    }
}

struct JsonValue(Value);

impl<'de> de::Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor).map(JsonValue)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(v as f64),
        })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(JsonValue(v)) = seq.next_element()? {
            items.push(ListItem::Value(v));
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        let mut seen = KeySet::default();
        while let Some(k) = map.next_key::<String>()? {
            if !seen.insert(&k) {
                return Err(de::Error::custom(format!("duplicate key {k:?}")));
            }
            let JsonValue(v) = map.next_value()?;
            items.push(Item::Entry(k, v));
        }
        Ok(Value::Map(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_types() {
        let items = parse(r#"{"z": 1, "a": [true, 1.5, null, "s"], "m": {"k": 18446744073709551615}}"#).unwrap();
        assert_eq!(
            items,
            vec![
                Item::Entry("z".into(), Value::Int(1)),
                Item::Entry(
                    "a".into(),
                    Value::List(vec![
                        ListItem::Value(Value::Bool(true)),
                        ListItem::Value(Value::Float(1.5)),
                        ListItem::Value(Value::Null),
                        ListItem::Value(Value::Str("s".into())),
                    ])
                ),
                Item::Entry(
                    "m".into(),
                    Value::Map(vec![Item::Entry("k".into(), Value::Float(18446744073709551615.0))])
                ),
            ]
        );
    }

    #[test]
    fn refuses_malformed() {
        assert!(parse(r#"{"a": 1, "a": 2}"#).unwrap_err().contains("duplicate"));
        assert!(parse("[1]").unwrap_err().contains("object"));
        assert!(parse(r#"{"a": }"#).unwrap_err().contains("line 1"));
        assert!(parse(r#"{"a": 1} x"#).unwrap_err().contains("trailing"));
    }
}

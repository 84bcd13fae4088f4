//! Conversion between JSON values and yrs `Any` values.
//!
//! Every number goes into the doc as a float64 (`Number::Float`), never as an integer or
//! BigInt, so JavaScript peers and `JSON.stringify` read it as a plain number. Going back,
//! integral numbers within ±2^53 become JSON integers, as `JSON.stringify` would print them.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Number as JsonNumber, Value};
use yrs::any::Number;
use yrs::Any;

const MAX_SAFE: f64 = 9_007_199_254_740_991.0;

/// JSON → `Any`, numbers as float64.
pub fn json_to_any(value: &Value) -> Any {
    match value {
        Value::Null => Any::Null,
        Value::Bool(b) => Any::Bool(*b),
        Value::Number(n) => Any::Number(Number::Float(n.as_f64().unwrap_or(0.0))),
        Value::String(s) => Any::String(Arc::from(s.as_str())),
        Value::Array(items) => Any::Array(items.iter().map(json_to_any).collect()),
        Value::Object(obj) => Any::Map(Arc::new(
            obj.iter()
                .map(|(k, v)| (k.clone(), json_to_any(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

/// A float as JSON: an integer when it is one (within ±2^53), `null` when not finite.
pub fn f64_to_json(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() <= MAX_SAFE {
        Value::Number(JsonNumber::from(n as i64))
    } else {
        JsonNumber::from_f64(n)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

/// The `f64` of a number `Any`, whatever its encoding.
pub fn any_as_f64(value: &Any) -> Option<f64> {
    match value {
        Any::Number(Number::Float(f)) => Some(*f),
        Any::Number(Number::Int(i)) => Some(*i as f64),
        _ => None,
    }
}

/// `Any` → JSON. Buffers become arrays of byte values; `undefined` becomes `null`.
pub fn any_to_json(value: &Any) -> Value {
    match value {
        Any::Null | Any::Undefined => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(Number::Float(f)) => f64_to_json(*f),
        Any::Number(Number::Int(i)) => Value::Number((*i).into()),
        Any::String(s) => Value::String(s.to_string()),
        Any::Buffer(b) => Value::Array(b.iter().map(|x| Value::from(*x)).collect()),
        Any::Array(items) => Value::Array(items.iter().map(any_to_json).collect()),
        Any::Map(map) => {
            // HashMap order is random; sort keys so output is stable.
            let mut keys: Vec<_> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), any_to_json(&map[k])))
                    .collect::<Map<_, _>>(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_float64_and_come_back_as_json_integers() {
        assert_eq!(json_to_any(&json!(3)), Any::Number(Number::Float(3.0)));
        assert_eq!(any_to_json(&Any::Number(Number::Float(3.0))), json!(3));
        assert_eq!(any_to_json(&Any::Number(Number::Float(2.5))), json!(2.5));
        assert_eq!(any_to_json(&Any::Number(Number::Int(7))), json!(7));
        assert_eq!(
            any_to_json(&Any::Number(Number::Float(f64::NAN))),
            Value::Null
        );
    }

    #[test]
    fn nested_values_round_trip() {
        let v = json!({"a": [1, "x", null, true], "b": {"c": 1.5}});
        assert_eq!(any_to_json(&json_to_any(&v)), v);
    }
}

//! Value transforms of a mapped field, applied before the value is coerced to its catalog
//! type: a map of values (`{ "true" = "Yes", "1" = "Yes" }`), then for numbers a scale, an
//! offset and rounding to some decimals.

use serde_json::Value;
use std::collections::BTreeMap;

/// What to do to a value (the default does nothing).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Transform {
    /// Replacements, by the value's text (`true`, `3`, `on`).
    pub(crate) map: BTreeMap<String, Value>,
    /// Multiplied by this.
    pub(crate) scale: Option<f64>,
    /// Then this added.
    pub(crate) offset: Option<f64>,
    /// Then rounded to this many decimals (0: a whole number).
    pub(crate) round: Option<u32>,
}

impl Transform {
    /// Rounding only (the defaults of the built-in formats use it).
    pub(crate) fn round(decimals: u32) -> Self {
        Transform {
            round: Some(decimals),
            ..Transform::default()
        }
    }

    /// The transformed value.
    pub(crate) fn apply(&self, v: &Value) -> Value {
        if !self.map.is_empty() {
            let text = match v {
                Value::String(s) => s.trim().to_string(),
                other => other.to_string(),
            };
            if let Some(to) = self.map.get(&text) {
                return to.clone();
            }
        }
        if self.scale.is_none() && self.offset.is_none() && self.round.is_none() {
            return v.clone();
        }
        let Some(mut f) = (match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        }) else {
            return v.clone();
        };
        f = f * self.scale.unwrap_or(1.0) + self.offset.unwrap_or(0.0);
        match self.round {
            Some(0) => Value::from(f.round() as i64),
            Some(d) => {
                let m = 10f64.powi(d.min(9) as i32);
                serde_json::Number::from_f64((f * m).round() / m).map_or(Value::Null, Value::Number)
            }
            None => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_then_scales_offsets_and_rounds() {
        let t = Transform {
            map: [
                ("true".to_string(), json!("Yes")),
                ("off".into(), json!("No")),
            ]
            .into_iter()
            .collect(),
            ..Transform::default()
        };
        assert_eq!(t.apply(&json!(true)), json!("Yes"));
        assert_eq!(t.apply(&json!(" off ")), json!("No"));
        assert_eq!(t.apply(&json!(3)), json!(3));
        let t = Transform {
            scale: Some(0.1),
            offset: Some(-1.0),
            round: Some(1),
            ..Transform::default()
        };
        assert_eq!(t.apply(&json!(235)), json!(22.5));
        assert_eq!(t.apply(&json!("235")), json!(22.5));
        assert_eq!(t.apply(&json!("n/a")), json!("n/a"));
        assert_eq!(Transform::round(0).apply(&json!(41.6)), json!(42));
        assert_eq!(Transform::default().apply(&json!(41.6)), json!(41.6));
    }
}

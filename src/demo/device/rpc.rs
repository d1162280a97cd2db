//! JSON-RPC 2.0 over the socket: a text frame's request, its dispatch to `xGet`, `xQuery`,
//! `xFeedback/(Un)Subscribe` and the one command (`RoomAnalytics RoomInUse Set`), the errors
//! RoomOS answers with, and the frames sent back.

use super::query::{filter, parse_query, select, Deny, Doc, Elem};
use super::tree::{entry_id, State, Sub};
use super::Shared;
use serde_json::{json, Map, Value};

/// Subscriptions one connection may hold (RoomOS's limit).
const MAX_SUBSCRIPTIONS: usize = 50;

/// A JSON-RPC error.
#[derive(Debug, Clone, Copy)]
pub(super) struct RpcError {
    /// The error code.
    code: i64,
    /// The error message.
    message: &'static str,
}

/// Path matches nothing in the schema.
pub(super) const NO_MATCH: RpcError = RpcError {
    code: 3,
    message: "No match on Path argument",
};
/// The account may not read this.
const DENIED: RpcError = RpcError {
    code: -31999,
    message: "Permission denied",
};
/// Too many subscriptions on one connection.
const TOO_MANY: RpcError = RpcError {
    code: -31998,
    message: "Global subscription count exceeded",
};
/// Frame is not JSON.
const PARSE_ERROR: RpcError = RpcError {
    code: -32700,
    message: "Parse error",
};
/// JSON that is not a request.
const INVALID_REQUEST: RpcError = RpcError {
    code: -32600,
    message: "Invalid Request",
};
/// A command that could not be carried out.
const COMMAND_ERROR: RpcError = RpcError {
    code: 1,
    message: "Command error",
};
/// Unknown method.
const NO_METHOD: RpcError = RpcError {
    code: -32601,
    message: "Method not found",
};
/// Missing or ill-typed params.
pub(super) const INVALID_PARAMS: RpcError = RpcError {
    code: -32602,
    message: "Invalid params",
};

impl Shared {
    /// Answers one text frame from connection `conn_id`: the frames to send, in order.
    pub(super) fn handle_text(&self, st: &mut State, conn_id: u64, text: &str) -> Vec<String> {
        let Ok(req) = serde_json::from_str::<Value>(text) else {
            return vec![error_frame(&Value::Null, PARSE_ERROR)];
        };
        let Some(obj) = req.as_object() else {
            return vec![error_frame(&Value::Null, INVALID_REQUEST)];
        };
        let id = obj.get("id");
        let id_valid = id.is_none_or(|v| v.is_null() || v.is_number() || v.is_string());
        let version_ok = obj.get("jsonrpc").is_none_or(|v| v.as_str() == Some("2.0"));
        let method = obj.get("method").and_then(Value::as_str);
        let (Some(method), true, true) = (method, id_valid, version_ok) else {
            let id = if id_valid { id.cloned() } else { None };
            return vec![error_frame(&id.unwrap_or(Value::Null), INVALID_REQUEST)];
        };
        let params = obj.get("params");
        let mut after = Vec::new();
        let outcome = match method {
            "xGet" => self.x_get(st, params),
            "xQuery" => self.x_query(st, params),
            "xFeedback/Subscribe" => self.subscribe(st, conn_id, params, &mut after),
            "xFeedback/Unsubscribe" => unsubscribe(st, conn_id, params),
            "xCommand/RoomAnalytics/RoomInUse/Set" => self.room_in_use_set(st, params),
            _ => Err(NO_METHOD),
        };
        let mut frames = Vec::with_capacity(1 + after.len());
        // A request without an id is a JSON-RPC notification: no response.
        if let Some(id) = id {
            frames.push(match outcome {
                Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }).to_string(),
                Err(e) => error_frame(id, e),
            });
        }
        frames.extend(after);
        frames
    }

    /// `xGet`: the value at a path.
    fn x_get(&self, st: &State, params: Option<&Value>) -> Result<Value, RpcError> {
        let (doc, pat, _) = parse_query(param(params, "Path")?)?;
        if doc != Doc::Status || !st.schema.matches(&pat) {
            return Err(NO_MATCH);
        }
        if self.deny.pattern(&pat) {
            return Err(DENIED);
        }
        let mut path = Vec::with_capacity(pat.len());
        let mut node = &st.tree;
        for elem in &pat {
            let Elem::Key(k) = elem else {
                return Err(NO_MATCH);
            };
            node = match node {
                Value::Object(m) => m.get(k),
                Value::Array(list) => list.iter().find(|e| entry_id(e) == Some(k.as_str())),
                _ => None,
            }
            .ok_or(NO_MATCH)?;
            path.push(k.clone());
        }
        filter(node, &mut path, self.deny).ok_or(DENIED)
    }

    /// `xQuery`: the matching part of the tree, from the root.
    fn x_query(&self, st: &State, params: Option<&Value>) -> Result<Value, RpcError> {
        let (doc, pat, _) = parse_query(param(params, "Query")?)?;
        if doc != Doc::Status || !st.schema.matches(&pat) {
            return Err(NO_MATCH);
        }
        if self.deny.pattern(&pat) {
            return Err(DENIED);
        }
        let found = select(&st.tree, &pat, &mut Vec::new(), self.deny).unwrap_or_else(|| json!({}));
        Ok(json!({ "Status": found }))
    }

    /// `xCommand RoomAnalytics RoomInUse Set`: `State` (`InUse`, `NotInUse`), optional
    /// `Duration` (1..3600 s, default 300; checked, not timed: the source stays in use until
    /// it says otherwise) and `ID` (1..100 characters).
    fn room_in_use_set(&self, st: &mut State, params: Option<&Value>) -> Result<Value, RpcError> {
        let p = params.and_then(Value::as_object).ok_or(INVALID_PARAMS)?;
        let in_use = match p.get("State").and_then(Value::as_str) {
            Some(s) if s.eq_ignore_ascii_case("InUse") => true,
            Some(s) if s.eq_ignore_ascii_case("NotInUse") => false,
            _ => return Err(INVALID_PARAMS),
        };
        if let Some(d) = p.get("Duration") {
            let secs = d
                .as_u64()
                .or_else(|| d.as_str().and_then(|s| s.parse().ok()));
            if !secs.is_some_and(|s| (1..=3600).contains(&s)) {
                return Err(INVALID_PARAMS);
            }
        }
        let source = match p.get("ID") {
            None => None,
            Some(Value::String(s)) if (1..=100).contains(&s.chars().count()) => Some(s.as_str()),
            Some(_) => return Err(INVALID_PARAMS),
        };
        if st.room_in_use_set(source, in_use, self.deny) {
            Ok(json!({ "status": "OK" }))
        } else {
            Err(COMMAND_ERROR)
        }
    }

    /// `xFeedback/Subscribe`; the current values (NotifyCurrentValue) go to `after`.
    fn subscribe(
        &self,
        st: &mut State,
        conn_id: u64,
        params: Option<&Value>,
        after: &mut Vec<String>,
    ) -> Result<Value, RpcError> {
        let query = param(params, "Query")?;
        let notify = match params.and_then(|p| p.get("NotifyCurrentValue")) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(INVALID_PARAMS),
        };
        let (doc, pattern, strings) = parse_query(query)?;
        let (schema, deny) = match doc {
            Doc::Status => (&st.schema, self.deny),
            Doc::Event => (&st.event_schema, Deny(&[])),
        };
        if !schema.matches(&pattern) {
            return Err(NO_MATCH);
        }
        if deny.pattern(&pattern) {
            return Err(DENIED);
        }
        let Some(conn) = st.conns.get_mut(&conn_id) else {
            return Err(INVALID_REQUEST);
        };
        if conn.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(TOO_MANY);
        }
        let id = conn.next_sub;
        conn.next_sub += 1;
        if notify && doc == Doc::Status {
            if let Some(current) = select(&st.tree, &pattern, &mut Vec::new(), deny) {
                after.push(notification(id, doc, current));
            }
        }
        conn.subs.insert(
            id,
            Sub {
                doc,
                pattern,
                query: strings,
            },
        );
        Ok(json!({ "Id": id }))
    }
}

/// `xFeedback/Unsubscribe`.
fn unsubscribe(st: &mut State, conn_id: u64, params: Option<&Value>) -> Result<Value, RpcError> {
    let id = param(params, "Id")?.as_u64().ok_or(INVALID_PARAMS)?;
    let conn = st.conns.get_mut(&conn_id).ok_or(INVALID_REQUEST)?;
    match conn.subs.remove(&id) {
        Some(_) => Ok(json!({})),
        None => Err(INVALID_PARAMS),
    }
}

/// A field of the params object.
fn param<'a>(params: Option<&'a Value>, name: &str) -> Result<&'a Value, RpcError> {
    params
        .and_then(Value::as_object)
        .and_then(|p| p.get(name))
        .ok_or(INVALID_PARAMS)
}

/// An `xFeedback/Event` frame.
pub(super) fn notification(id: u64, doc: Doc, body: Value) -> String {
    let mut params = Map::new();
    params.insert("Id".to_string(), Value::from(id));
    params.insert(doc.name().to_string(), body);
    json!({ "jsonrpc": "2.0", "method": "xFeedback/Event", "params": params }).to_string()
}

/// A JSON-RPC error frame.
fn error_frame(id: &Value, e: RpcError) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": e.code, "message": e.message } })
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::super::test_client::{call, connect, quiet, recv, start};
    use super::super::Role;
    use futures_util::SinkExt as _;
    use serde_json::{json, Value};
    use tokio_tungstenite::tungstenite::Message;

    #[tokio::test]
    async fn basic_auth_and_xget() {
        let sim = start(Role::Integrator).await;
        assert!(sim.url().starts_with("wss://127.0.0.1:"));
        assert_eq!(sim.cert_sha256().len(), 32 * 3 - 1);
        assert!(sim.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let mut ws = connect(&sim).await;
        let r = call(
            &mut ws,
            json!(1),
            "xGet",
            json!({"Path": ["Status", "SystemUnit", "Hardware", "Module", "SerialNumber"]}),
        )
        .await;
        assert_eq!(
            r,
            json!({"jsonrpc": "2.0", "id": 1, "result": "FOC0000SIM1"})
        );
        let r = call(
            &mut ws,
            json!("abc"),
            "xGet",
            json!({"Path": ["Status", "RoomAnalytics", "PeopleCount", "Current"]}),
        )
        .await;
        assert_eq!(r["result"], json!(-1));
        let r = call(
            &mut ws,
            json!(2),
            "xGet",
            json!({"Path": ["Status", "Peripherals", "ConnectedDevice", 1002, "RoomAnalytics"]}),
        )
        .await;
        assert_eq!(
            r["result"],
            json!({"AmbientTemperature": "22.5", "RelativeHumidity": 41, "AirQuality": {"Index": "1.2"}})
        );
        let r = call(
            &mut ws,
            json!(3),
            "xGet",
            json!({"Path": ["Status", "RoomAnalytics"]}),
        )
        .await;
        assert_eq!(r["result"]["PeopleCount"]["Capacity"], json!(8));
        assert!(r["result"].get("AmbientTemperature").is_none());
        assert_eq!(sim.connections(), 1);
        assert_eq!(sim.connects(), 1);
        assert_eq!(sim.connect_times().len(), 1);
    }

    #[tokio::test]
    async fn query_shapes_and_errors() {
        let sim = start(Role::Integrator).await;
        let mut ws = connect(&sim).await;
        let r = call(
            &mut ws,
            json!(1),
            "xQuery",
            json!({"Query": ["Status", "RoomAnalytics", "PeopleCount"]}),
        )
        .await;
        assert_eq!(
            r["result"],
            json!({"Status": {"RoomAnalytics": {"PeopleCount": {"Current": -1, "Capacity": 8}}}})
        );
        let r = call(
            &mut ws,
            json!(2),
            "xQuery",
            json!({"Query": ["Status", "Peripherals", "ConnectedDevice", "RoomAnalytics", "AmbientTemperature"]}),
        )
        .await;
        assert_eq!(
            r["result"],
            json!({"Status": {"Peripherals": {"ConnectedDevice": [
                {"id": "1002", "RoomAnalytics": {"AmbientTemperature": "22.5"}}
            ]}}})
        );
        let r = call(
            &mut ws,
            json!(3),
            "xQuery",
            json!({"Query": ["Status", "Peripherals", "ConnectedDevice", "1002", "Name"]}),
        )
        .await;
        assert_eq!(
            r["result"],
            json!({"Status": {"Peripherals": {"ConnectedDevice": [{"id": "1002", "Name": "Room Navigator"}]}}})
        );
        // A subtree holding forbidden nodes: allowed, without them.
        let r = call(
            &mut ws,
            json!(4),
            "xQuery",
            json!({"Query": ["Status", "RoomAnalytics", "**"]}),
        )
        .await;
        let ra = &r["result"]["Status"]["RoomAnalytics"];
        assert_eq!(ra["PeoplePresence"], json!("No"));
        assert!(ra.get("AmbientTemperature").is_none() && ra.get("AirQuality").is_none());
        // Errors.
        let code = |r: &Value| r["error"]["code"].as_i64().unwrap();
        let r = call(
            &mut ws,
            json!(5),
            "xGet",
            json!({"Path": ["Status", "RoomAnalytics", "AmbientTemperature"]}),
        )
        .await;
        assert_eq!(code(&r), -31999);
        assert_eq!(r["error"]["message"], json!("Permission denied"));
        let r = call(
            &mut ws,
            json!(6),
            "xQuery",
            json!({"Query": ["Status", "RoomAnalytics", "AirQuality", "Index"]}),
        )
        .await;
        assert_eq!(code(&r), -31999);
        let r = call(
            &mut ws,
            json!(7),
            "xGet",
            json!({"Path": ["Status", "RoomAnalytics", "Nope"]}),
        )
        .await;
        assert_eq!(code(&r), 3);
        assert_eq!(r["error"]["message"], json!("No match on Path argument"));
        let r = call(
            &mut ws,
            json!(8),
            "xQuery",
            json!({"Query": ["Status", "roomanalytics"]}),
        )
        .await;
        assert_eq!(code(&r), 3);
        let r = call(&mut ws, json!(9), "xCommand/Dial", json!({})).await;
        assert_eq!(code(&r), -32601);
        let r = call(&mut ws, json!(10), "xGet", json!({})).await;
        assert_eq!(code(&r), -32602);
        let r = call(
            &mut ws,
            json!(11),
            "xFeedback/Unsubscribe",
            json!({"Id": 99}),
        )
        .await;
        assert_eq!(code(&r), -32602);
        ws.send(Message::text("{not json")).await.unwrap();
        let r = recv(&mut ws).await;
        assert_eq!((code(&r), r["id"].clone()), (-32700, Value::Null));
        ws.send(Message::text("[1,2]")).await.unwrap();
        assert_eq!(code(&recv(&mut ws).await), -32600);
        ws.send(Message::text(r#"{"jsonrpc":"2.0","id":12,"result":{}}"#))
            .await
            .unwrap();
        let r = recv(&mut ws).await;
        assert_eq!((code(&r), r["id"].clone()), (-32600, json!(12)));

        // An Admin reads the main unit's sensors.
        let admin = start(Role::Admin).await;
        let mut ws = connect(&admin).await;
        let r = call(
            &mut ws,
            json!(1),
            "xGet",
            json!({"Path": ["Status", "RoomAnalytics", "AmbientTemperature"]}),
        )
        .await;
        assert_eq!(r["result"], json!("23.5"));
    }

    #[tokio::test]
    async fn feedback_status_ghosts_and_events() {
        let sim = start(Role::Integrator).await;
        let mut ws = connect(&sim).await;
        let r = call(
            &mut ws,
            json!(1),
            "xFeedback/Subscribe",
            json!({"Query": ["Status", "RoomAnalytics", "PeopleCount", "Current"], "NotifyCurrentValue": true}),
        )
        .await;
        assert_eq!(r["result"], json!({"Id": 1}));
        assert_eq!(
            recv(&mut ws).await,
            json!({"jsonrpc": "2.0", "method": "xFeedback/Event",
                   "params": {"Id": 1, "Status": {"RoomAnalytics": {"PeopleCount": {"Current": -1}}}}})
        );
        let r = call(
            &mut ws,
            json!(2),
            "xFeedback/Subscribe",
            json!({"Query": ["Status", "RoomAnalytics"], "NotifyCurrentValue": false}),
        )
        .await;
        assert_eq!(r["result"], json!({"Id": 2}));

        sim.set_status("RoomAnalytics.PeopleCount.Current", json!(3));
        let expected = json!({"RoomAnalytics": {"PeopleCount": {"Current": 3}}});
        for id in [1, 2] {
            let n = recv(&mut ws).await;
            assert_eq!(n["method"], json!("xFeedback/Event"));
            assert_eq!(n["params"], json!({"Id": id, "Status": expected}));
        }
        // Unchanged value and a forbidden one: nothing.
        sim.set_status("RoomAnalytics.PeopleCount.Current", json!(3));
        sim.set_status("RoomAnalytics.AmbientTemperature", json!("24.0"));
        quiet(&mut ws).await;

        // The Navigator, a new entry, and its ghost.
        let r = call(
            &mut ws,
            json!(3),
            "xFeedback/Subscribe",
            json!({"Query": ["Status", "Peripherals", "ConnectedDevice"]}),
        )
        .await;
        assert_eq!(r["result"], json!({"Id": 3}));
        sim.set_status(
            "Peripherals.ConnectedDevice[1002].RoomAnalytics.AmbientTemperature",
            json!("22.7"),
        );
        assert_eq!(
            recv(&mut ws).await["params"],
            json!({"Id": 3, "Status": {"Peripherals": {"ConnectedDevice": [
                {"id": "1002", "RoomAnalytics": {"AmbientTemperature": "22.7"}}
            ]}}})
        );
        sim.set_status("Peripherals.ConnectedDevice[1115].Name", json!("Room Bar"));
        assert_eq!(
            recv(&mut ws).await["params"]["Status"]["Peripherals"]["ConnectedDevice"][0],
            json!({"id": "1115", "Name": "Room Bar"})
        );
        sim.remove("Peripherals.ConnectedDevice[1115]");
        assert_eq!(
            recv(&mut ws).await["params"],
            json!({"Id": 3, "Status": {"Peripherals": {"ConnectedDevice": [{"id": "1115", "ghost": "True"}]}}})
        );
        assert_eq!(
            sim.subscriptions(),
            vec![
                vec!["Status", "RoomAnalytics", "PeopleCount", "Current"],
                vec!["Status", "RoomAnalytics"],
                vec!["Status", "Peripherals", "ConnectedDevice"],
            ]
        );

        // Events.
        let r = call(
            &mut ws,
            json!(4),
            "xFeedback/Subscribe",
            json!({"Query": ["Event", "UserInterface", "Extensions"]}),
        )
        .await;
        assert_eq!(r["result"], json!({"Id": 4}));
        let r = call(
            &mut ws,
            json!(5),
            "xFeedback/Subscribe",
            json!({"Query": ["Event", "NoSuchEvent"]}),
        )
        .await;
        assert_eq!(r["error"]["code"], json!(3));
        let action = json!({"WidgetId": "w1", "Type": "clicked", "Value": ""});
        sim.emit_event("UserInterface.Extensions.Widget.Action", action.clone());
        assert_eq!(
            recv(&mut ws).await["params"],
            json!({"Id": 4, "Event": {"UserInterface": {"Extensions": {"Widget": {"Action": action}}}}})
        );
        sim.emit_event("CallDisconnect", json!({"CallId": 1}));
        quiet(&mut ws).await;

        // Unsubscribe, then a change reaches only the others, in order.
        let r = call(&mut ws, json!(6), "xFeedback/Unsubscribe", json!({"Id": 2})).await;
        assert_eq!(r["result"], json!({}));
        for n in 4..7 {
            sim.set_status("RoomAnalytics.PeopleCount.Current", json!(n));
        }
        for n in 4..7 {
            let got = recv(&mut ws).await;
            assert_eq!(got["params"]["Id"], json!(1));
            assert_eq!(
                got["params"]["Status"]["RoomAnalytics"]["PeopleCount"]["Current"],
                json!(n)
            );
        }
        quiet(&mut ws).await;
    }

    #[tokio::test]
    async fn subscription_limit() {
        let sim = start(Role::User).await;
        let mut ws = connect(&sim).await;
        for i in 1..=50 {
            let r = call(
                &mut ws,
                json!(i),
                "xFeedback/Subscribe",
                json!({"Query": ["Status", "Standby", "State"]}),
            )
            .await;
            assert_eq!(r["result"]["Id"], json!(i));
        }
        let r = call(
            &mut ws,
            json!(51),
            "xFeedback/Subscribe",
            json!({"Query": ["Status", "Standby", "State"]}),
        )
        .await;
        assert_eq!(r["error"]["code"], json!(-31998));
        assert_eq!(sim.subscriptions().len(), 50);
    }
}

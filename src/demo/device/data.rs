//! The seed data: the status tree a simulated device starts with and the events it knows.

use super::DeviceSimOptions;
use serde_json::{json, Value};

/// The status tree a device starts with.
pub(super) fn initial_status(opts: &DeviceSimOptions) -> Value {
    json!({
        "SystemUnit": {
            "ProductId": opts.product_id,
            "Hardware": { "Module": { "SerialNumber": opts.serial } },
            "State": { "NumberOfActiveCalls": 0, "System": "Initialized" }
        },
        "RoomAnalytics": {
            "PeopleCount": { "Current": -1, "Capacity": 8 },
            "PeoplePresence": "No",
            "RoomInUse": "False",
            "AmbientTemperature": "23.5",
            "RelativeHumidity": 38,
            "AirQuality": { "Index": "1.4" },
            "AmbientNoise": { "Level": { "A": 32 } },
            "Sound": { "Level": { "A": 35 } },
            "Engagement": { "CloseProximity": "False" }
        },
        "Standby": { "State": "Standby" },
        "Peripherals": {
            "ConnectedDevice": [{
                "id": "1002",
                "Name": "Room Navigator",
                "Type": "TouchPanel",
                "RoomAnalytics": {
                    "AmbientTemperature": "22.5",
                    "RelativeHumidity": 41,
                    "AirQuality": { "Index": "1.2" }
                }
            }]
        }
    })
}

/// The events a device knows (the shape only).
pub(super) fn event_schema_tree() -> Value {
    json!({
        "UserInterface": {
            "Extensions": {
                "Widget": { "Action": { "WidgetId": "", "Type": "", "Value": "" } },
                "Panel": {
                    "Clicked": { "PanelId": "" },
                    "Close": { "PanelId": "" }
                }
            },
            "Message": { "Prompt": { "Response": { "FeedbackId": "", "OptionId": "" } } }
        },
        "BootEvent": { "Level": "" },
        "CallDisconnect": { "CallId": "", "CauseType": "", "CauseValue": "" },
        "CallSuccessful": { "CallId": "", "Protocol": "", "RemoteURI": "" },
        "OutgoingCallIndication": { "CallId": "" },
        "Bookings": { "Start": { "Id": "" }, "End": { "Id": "" } }
    })
}

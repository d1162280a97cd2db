//! The seed data: the status tree a simulated device starts with and the events it knows.
//!
//! Shapes and value types follow Cisco's xAPI reference (roomos.cisco.com/xapi): an `Integer`
//! status is a JSON number, a `String` one a JSON string (temperatures and air quality too:
//! `"22.5"`), a `Literal` one of its literals. The device is a Room Kit in standby with a
//! Room Navigator (1002) placed inside the room and these analytics on: people count out of
//! call, presence, ambient noise estimation, reverberation time, T3 alarm detection.

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
            "UltrasoundPresence": "No",
            "RoomInUse": "False",
            "AmbientTemperature": "23.5",
            "RelativeHumidity": 38,
            "AirQuality": { "Index": "1.4" },
            // RoomOS 26.5+: the room's readings by where its Navigators are; none outside.
            "InsideRoom": {
                "AmbientTemperature": "22.5",
                "RelativeHumidity": 41,
                "AirQualityIndex": "1.2"
            },
            "OutsideRoom": {
                "AmbientTemperature": "Unavailable",
                "RelativeHumidity": -1,
                "AirQualityIndex": "Unavailable"
            },
            "AmbientNoise": { "Level": { "A": 32 } },
            "Sound": { "Level": { "A": 35 } },
            "ReverberationTime": {
                "LastRun": "2026-11-27T03:12:45Z",
                "MeasurementState": "Measured",
                // The average of the 500 Hz and 1000 Hz octaves.
                "Middle": { "RT60": 410 },
                "Octaves": [
                    { "id": "1", "CenterFrequency": 125, "RT60": 560 },
                    { "id": "2", "CenterFrequency": 250, "RT60": 480 },
                    { "id": "3", "CenterFrequency": 500, "RT60": 420 },
                    { "id": "4", "CenterFrequency": 1000, "RT60": 400 },
                    { "id": "5", "CenterFrequency": 2000, "RT60": 380 },
                    { "id": "6", "CenterFrequency": 4000, "RT60": 350 }
                ]
            },
            "T3Alarm": { "Detected": "False" },
            "Engagement": { "CloseProximity": "False" },
            // The cameras are off in standby.
            "LightingConditions": "Unknown"
        },
        "Bookings": {
            "Availability": { "Status": "Free", "TimeStamp": "" },
            "Current": { "Id": "" }
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

/// Status nodes the device knows although they hold nothing yet (a query or subscription
/// naming them is valid): the shape only.
pub(super) fn status_shapes() -> Value {
    json!({
        "RoomAnalytics": {
            // Filled by `xCommand RoomAnalytics RoomInUse Set ID: …`.
            "OccupancySensor": [{ "id": "1", "ID": "", "RoomInUse": "" }]
        }
    })
}

/// The events a device knows (the shape only: the parameters the reference lists, a string
/// `""` or an integer `0` each).
pub(super) fn event_schema_tree() -> Value {
    json!({
        "UserInterface": {
            "Extensions": {
                "Widget": { "Action": { "WidgetId": "", "Type": "", "Value": "" } },
                "Panel": {
                    "Clicked": { "PanelId": "" },
                    "Close": { "PeripheralId": "", "Target": "" }
                }
            },
            "Message": {
                "Prompt": {
                    "Response": { "FeedbackId": "", "OptionId": 0 },
                    "Cleared": { "FeedbackId": "" }
                },
                "Rating": {
                    "Response": { "FeedbackId": "", "Rating": 0 },
                    "Cleared": { "FeedbackId": "" }
                },
                "TextInput": {
                    "Response": { "FeedbackId": "", "Text": "" },
                    "Clear": { "FeedbackId": "" }
                }
            },
            "WebView": {
                "Display": { "Url": "", "Title": "", "Target": "" },
                "Cleared": { "Target": "" }
            },
            "Assistant": { "Notification": { "Name": "", "Payload": "" } }
        },
        "BootEvent": { "Action": "" },
        "CallDisconnect": { "CallId": 0, "CauseType": "", "CauseValue": 0, "Duration": 0 },
        "CallSuccessful": { "CallId": 0, "Protocol": "", "RemoteURI": "" },
        "OutgoingCallIndication": { "CallId": 0 },
        "Bookings": {
            "Start": { "Id": "" },
            "End": { "Id": "", "StartTime": "", "EndTime": "", "ScheduledDuration": 0 },
            "ExtensionRequested": { "Id": "", "Duration": 0, "NewEndTime": "" },
            "Deleted": { "Id": "", "Cause": "", "MinutesFreed": 0 },
            "CheckedIn": { "Id": "", "StartTime": "", "EndTime": "", "MinuteOffset": 0 },
            "BookingCreated": { "Id": "", "MeetingId": "", "StartTime": "", "Duration": 0, "Title": "" },
            "BookingMoved": { "Id": "", "StartTime": "", "Duration": 0 },
            "Updated": {},
            "StartTimeBuffer": { "Id": "" },
            "EndTimeBuffer": { "Id": "" }
        }
    })
}

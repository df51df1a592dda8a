//! The messages of an AsyncAPI document: requests, answers, stream items,
//! the end marker and failures, with their headers.

use serde_json::Value;
use serde_json::{json, Map};

use crate::protocol::QoS;
use crate::protocol::{
    Status, INSTANCE_PROPERTY, SCHEMA_PARAMETER, SEQ_PROPERTY, STATUS_PROPERTY, TEXT_CONTENT_TYPE,
    TIMEOUT_PROPERTY,
};
use crate::Codec;

use super::model::{MethodDoc, OutputDoc};
use super::MQTT_BINDING_VERSION;

pub(super) fn codec_id(codec: Codec) -> &'static str {
    match codec {
        Codec::Json => "json",
        Codec::Postcard => "postcard",
    }
}

pub(super) fn codec_title(codec: Codec) -> &'static str {
    match codec {
        Codec::Json => "JSON",
        Codec::Postcard => "postcard",
    }
}

pub(super) fn qos_number(qos: QoS) -> u8 {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

pub(super) fn correlation_schema() -> Value {
    json!({
        "type": "string",
        "format": "binary",
        "description": "MQTT v5 Correlation Data: opaque bytes chosen by the caller, echoed byte for byte in every answer (mqrpc clients send an 8-byte big-endian counter).",
    })
}

pub(super) fn correlation_id() -> Value {
    json!({
        "location": "$message.header#/correlationData",
        "description": "The MQTT v5 Correlation Data property.",
    })
}

pub(super) fn headers(properties: Value, required: &[&str]) -> Value {
    let mut schema = json!({
        "type": "object",
        "description": "MQTT v5 user properties (UTF-8 string pairs).",
        "properties": properties,
    });
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

pub(super) fn content_type_note(codec: Codec) -> String {
    match codec {
        Codec::Json => format!("Content Type `{}`.", codec.content_type()),
        Codec::Postcard => format!(
            "Content Type `{}`, or none (absent means postcard). postcard is not \
             self-describing: it carries the same serde data model as the JSON schema \
             describes, in the [postcard wire format](https://postcard.jamesmunns.com/wire-format).",
            codec.content_type()
        ),
    }
}

pub(super) fn request_message(method: &MethodDoc, codec: Codec) -> Value {
    let oneway = matches!(method.output, OutputDoc::Oneway);
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut items = Vec::new();
    for arg in &method.args {
        properties.insert(arg.name.into(), arg.schema.clone());
        if !arg.optional {
            required.push(arg.name);
        }
        items.push(arg.schema.clone());
    }
    let object = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "description": "The arguments by name. Fields of an `Option` type may be left out (then `None`); unknown fields are ignored.",
    });
    let payload = match codec {
        Codec::Json => json!({
            "description": "The arguments, as an object whose fields are the argument names, or as an array of the arguments in declaration order.",
            "oneOf": [object, in_order(items)],
        }),
        Codec::Postcard => {
            let mut object = object;
            // Positional: every field is there (`None` is a 0 byte).
            let all: Vec<&str> = method.args.iter().map(|arg| arg.name).collect();
            object["required"] = json!(all);
            object["description"] = json!(
                "The arguments as one struct: in postcard, the fields concatenated in declaration order (no names). A method without arguments takes an empty payload."
            );
            object
        }
    };
    let mut binding = json!({
        "contentType": codec.content_type(),
        "correlationData": correlation_schema(),
        "bindingVersion": MQTT_BINDING_VERSION,
    });
    let response = if oneway {
        "None: a one-way request carries no Response Topic (one that has one is answered like any other)."
    } else {
        "Where the answer goes; a request without one is one-way and not answered. mqrpc clients use `<reply prefix>/_reply/<client id>`."
    };
    binding["responseTopic"] = json!({ "type": "string", "description": response });
    let mut message = json!({
        "name": format!("{}_request", method.name),
        "title": format!("{} request ({})", method.name, codec_title(codec)),
        "contentType": codec.content_type(),
        "description": format!(
            "{} Generated clients add `; {SCHEMA_PARAMETER}={}`. Message Expiry Interval: the \
             caller's timeout in seconds, rounded up.",
            content_type_note(codec),
            method.fingerprint
        ),
        "headers": headers(
            json!({
                TIMEOUT_PROPERTY: {
                    "type": "string",
                    "pattern": "^[0-9]+$",
                    "description": "The caller's time budget in milliseconds (decimal). The server's deadline is arrival + min(this, the forwarded Message Expiry Interval).",
                }
            }),
            &[],
        ),
        "payload": payload,
        "bindings": { "mqtt": binding },
    });
    if !oneway {
        message["correlationId"] = correlation_id();
    }
    message
}

/// The name of the failure answer (a status other than `ok`), one per document.
pub(super) const FAILURE: &str = "failure";

/// The arguments as a JSON array, in declaration order.
pub(super) fn in_order(items: Vec<Value>) -> Value {
    let len = items.len();
    let mut schema = json!({
        "type": "array",
        "description": "The arguments in declaration order.",
        "minItems": len,
        "maxItems": len,
    });
    // AsyncAPI (like draft 07's meta-schema) wants a non-empty `items` array.
    if !items.is_empty() {
        schema["items"] = json!(items);
        schema["additionalItems"] = json!(false);
    }
    schema
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum ValueKind {
    Ok,
    Error,
    Item,
}

pub(super) fn status_header(value: &str, description: &str) -> Value {
    json!({ "type": "string", "const": value, "description": description })
}

pub(super) fn value_message(
    method: &MethodDoc,
    codec: Codec,
    schema: &Value,
    kind: ValueKind,
) -> Value {
    let (name, title, mut props, required): (_, _, Map<String, Value>, &[&str]) = match kind {
        ValueKind::Ok => (
            "result",
            "result",
            [(
                STATUS_PROPERTY.to_string(),
                status_header("ok", "Absent on success (absent means `ok`)."),
            )]
            .into_iter()
            .collect(),
            &[],
        ),
        ValueKind::Error => (
            "error",
            "typed error",
            [(
                STATUS_PROPERTY.to_string(),
                status_header("error", "The method returned `Err`: the payload is the error value."),
            )]
            .into_iter()
            .collect(),
            &[STATUS_PROPERTY],
        ),
        ValueKind::Item => (
            "item",
            "stream item",
            [
                (
                    STATUS_PROPERTY.to_string(),
                    status_header("ok", "Absent on items (absent means `ok`)."),
                ),
                (
                    SEQ_PROPERTY.to_string(),
                    json!({ "type": "string", "pattern": "^[0-9]+$", "description": "The item's position: 0, 1, 2, ..." }),
                ),
            ]
            .into_iter()
            .collect(),
            &[SEQ_PROPERTY, INSTANCE_PROPERTY],
        ),
    };
    props.insert(
        INSTANCE_PROPERTY.to_string(),
        json!({ "type": "string", "description": "The answering server's instance id (on answers to broadcasts and on stream items)." }),
    );
    let mut binding = json!({
        "contentType": codec.content_type(),
        "correlationData": correlation_schema(),
        "bindingVersion": MQTT_BINDING_VERSION,
    });
    if codec == Codec::Postcard {
        binding.as_object_mut().map(|b| b.remove("contentType"));
    }
    json!({
        "name": format!("{}_{name}", method.name),
        "title": format!("{} {title} ({})", method.name, codec_title(codec)),
        "contentType": codec.content_type(),
        "description": format!(
            "{} Sent when the request's Content Type was {}.",
            content_type_note(codec),
            codec.content_type()
        ),
        "headers": headers(Value::Object(props), required),
        "payload": schema,
        "correlationId": correlation_id(),
        "bindings": { "mqtt": binding },
    })
}

pub(super) fn end_message(method: &MethodDoc) -> Value {
    json!({
        "name": format!("{}_end", method.name),
        "title": format!("{} end of stream", method.name),
        "summary": "No more items follow. Empty payload.",
        "headers": headers(
            json!({
                STATUS_PROPERTY: status_header(Status::End.as_str(), "The end of the stream."),
                SEQ_PROPERTY: { "type": "string", "pattern": "^[0-9]+$", "description": "The number of items sent." },
                INSTANCE_PROPERTY: { "type": "string", "description": "The serving instance." },
            }),
            &[STATUS_PROPERTY, SEQ_PROPERTY],
        ),
        "correlationId": correlation_id(),
        "bindings": { "mqtt": {
            "correlationData": correlation_schema(),
            "bindingVersion": MQTT_BINDING_VERSION,
        } },
    })
}

pub(super) fn failure_message() -> Value {
    let statuses: Vec<&str> = [
        Status::UnknownMethod,
        Status::BadRequest,
        Status::UnsupportedContentType,
        Status::Internal,
        Status::DeadlineExceeded,
        Status::Overloaded,
        Status::TooLarge,
        Status::SchemaMismatch,
        Status::Unauthenticated,
        Status::PermissionDenied,
        Status::ResourceExhausted,
        Status::RetryRefused,
    ]
    .iter()
    .map(|s| s.as_str())
    .collect();
    json!({
        "name": FAILURE,
        "title": "framework failure",
        "summary": "The call failed in the framework, not in the method: unknown method, undecodable arguments, unsupported content type, panic, deadline, overload, size, schema mismatch, a refusal by a server layer (unauthenticated, permission denied, resource exhausted) or of a retry the server cannot vouch for.",
        "contentType": TEXT_CONTENT_TYPE,
        "headers": headers(
            json!({
                STATUS_PROPERTY: {
                    "type": "string",
                    "enum": statuses,
                    "description": "What went wrong (PROTOCOL.md, Response). Clients treat unknown values as a protocol error.",
                },
                SEQ_PROPERTY: { "type": "string", "pattern": "^[0-9]+$", "description": "On streams: the items sent so far." },
            }),
            &[STATUS_PROPERTY],
        ),
        "payload": { "type": "string", "description": "A UTF-8 message for humans." },
        "correlationId": correlation_id(),
        "bindings": { "mqtt": {
            "contentType": TEXT_CONTENT_TYPE,
            "correlationData": correlation_schema(),
            "bindingVersion": MQTT_BINDING_VERSION,
        } },
    })
}

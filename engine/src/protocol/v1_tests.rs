//! The `ringcast.v1` messages' tests: encodings of every server message,
//! and parsing of every client op and its errors.

use super::*;

fn payload(frame: &[u8]) -> &str {
    assert_eq!(frame[0], 0x81, "a final text frame");
    let (len, at) = match frame[1] {
        126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
        127 => panic!("no test frame is that long"),
        n => (n as usize, 2),
    };
    assert_eq!(frame.len(), at + len);
    std::str::from_utf8(&frame[at..]).unwrap()
}

fn json(frame: &[u8]) -> serde_json::Value {
    serde_json::from_str(payload(frame)).unwrap()
}

#[test]
fn content_types() {
    use Content::*;
    for (value, kind) in [
        ("text/plain", Text),
        ("Text/HTML; charset=utf-8", Text),
        ("application/json", Json),
        ("application/JSON ; charset=utf-8", Json),
        ("application/octet-stream", Binary),
        ("", Binary),
        ("text", Binary),
    ] {
        assert_eq!(Content::from_content_type(value), kind, "{value}");
    }
    assert!(Json.check(br#" {"a":[1,2]} "#).is_ok());
    assert!(Json.check(b"{").is_err() && Json.check(b"1 2").is_err());
    assert!(Text.check(b"\xff").is_err() && Binary.check(b"\xff").is_ok());
    assert_eq!(Json.opcode(), OpCode::Text);
}

#[test]
fn deliveries_carry_data_as_documented() {
    let at = Some(Position {
        offset: 12,
        epoch: "Jx3k",
    });
    let (frame, start) = message("a", at, &Data::new(Content::Json, br#"{"k":[1]}"#));
    assert_eq!(
        payload(&frame),
        r#"{"op":"message","topic":"a","offset":12,"epoch":"Jx3k","data":{"k":[1]}}"#
    );
    assert_eq!(data_member(&frame, start), br#""data":{"k":[1]}"#);
    let (frame, _) = message("a", None, &Data::new(Content::Text, "é \"q\"\n".as_bytes()));
    assert_eq!(
        json(&frame),
        serde_json::json!({"op":"message","topic":"a","data":"é \"q\"\n"})
    );
    let (frame, start) = message("b", at, &Data::new(Content::Binary, &[0, 255, 1]));
    assert_eq!(json(&frame)["b64data"], "AP8B");
    assert_eq!(data_member(&frame, start), br#""b64data":"AP8B""#);
    assert_eq!(
        payload(&broadcast(&Data::new(Content::Text, b"hi"))),
        r#"{"op":"broadcast","data":"hi"}"#
    );
    // A payload over 125 bytes takes the 16-bit length form.
    let big = "x".repeat(300);
    let (frame, _) = message("a", at, &Data::new(Content::Text, big.as_bytes()));
    assert_eq!(json(&frame)["data"], big.as_str());
}

#[test]
fn subscribed_replies() {
    let at = Position {
        offset: 7,
        epoch: "E",
    };
    assert_eq!(
        subscribed("a", Some(at), Some(true)),
        r#"{"op":"subscribed","topic":"a","offset":7,"epoch":"E","recovered":true}"#
    );
    assert_eq!(
        subscribed("a", None, Some(false)),
        r#"{"op":"subscribed","topic":"a","recovered":false}"#
    );
    assert_eq!(subscribed("a", None, None), control::ack("subscribed", "a"));
}

#[test]
fn parses_resume_and_the_control_messages() {
    assert_eq!(
        parse(r#"{"op":"subscribe","topic":"a","since":{"offset":12,"epoch":"Jx3k"}}"#),
        Ok(Request::Subscribe {
            topic: "a".into(),
            since: Some(Since {
                offset: 12,
                epoch: "Jx3k".into()
            }),
            join_leave: false,
        })
    );
    assert_eq!(
        parse(r#"{"op":"subscribe","topic":"a","join_leave":true}"#),
        Ok(Request::Subscribe {
            topic: "a".into(),
            since: None,
            join_leave: true,
        })
    );
    assert_eq!(
        parse(r#"{"op":"presence_stats","topic":"a"}"#),
        Ok(Request::PresenceStats { topic: "a".into() })
    );
    assert!(parse(r#"{"op":"presence"}"#)
        .unwrap_err()
        .contains("missing field `topic`"));
    assert_eq!(
        parse(r#"{"op":"unsubscribe","topic":"a"}"#),
        Ok(Request::Control(control::Request::Unsubscribe {
            topic: "a".into()
        }))
    );
    for (bad, why) in [
        (
            r#"{"op":"subscribe","topic":"a","since":{"offset":-1,"epoch":"E"}}"#,
            "expected u64",
        ),
        (
            r#"{"op":"subscribe","topic":"a","since":{"offset":1}}"#,
            "missing field `epoch`",
        ),
        (
            r#"{"op":"unsubscribe","topic":"a","since":{"offset":1,"epoch":"E"}}"#,
            "unknown field `since`",
        ),
    ] {
        let reason = parse(bad).unwrap_err();
        assert!(reason.contains(why), "{bad}: {reason}");
    }
    assert!(parse(r#"{"op":"dance"}"#).is_err());
}

#[test]
fn parses_publish_and_rpc() {
    match parse(r#"{"op":"publish","topic":"room.1","data":{"t":"hi"},"id":7}"#) {
        Ok(Request::Publish { topic, data, id }) => {
            assert_eq!(
                (topic.as_str(), &*data, id),
                ("room.1", r#"{"t":"hi"}"#, Some(7))
            );
        }
        other => panic!("{other:?}"),
    }
    match parse(r#"{"op":"rpc","method":"m"}"#) {
        Ok(Request::Rpc { id, method, data }) => {
            assert_eq!((id, method.as_str(), &*data), (None, "m", "null"));
        }
        other => panic!("{other:?}"),
    }
    for (bad, why) in [
        (r#"{"op":"publish","topic":"a"}"#, "missing field `data`"),
        (r#"{"op":"publish","data":1}"#, "missing field `topic`"),
        (r#"{"op":"rpc","method":""}"#, "method must be"),
        (
            r#"{"op":"publish","topic":"a","data":1,"x":2}"#,
            "invalid control message",
        ),
        (
            r#"{"op":"publish","topic":"a","data":1,"id":-1}"#,
            "invalid control message",
        ),
    ] {
        let reason = parse(bad).unwrap_err();
        assert!(reason.contains(why), "{bad}: {reason}");
    }
    assert_eq!(
        json(&published(Some(7), Some(3))),
        serde_json::json!({"op":"published","id":7,"offset":3})
    );
    assert_eq!(
        json(&error(Some(7), "forbidden")),
        serde_json::json!({"op":"error","id":7,"reason":"forbidden"})
    );
    let data = RawValue::from_string("[1]".into()).unwrap();
    assert_eq!(
        payload(&rpc_result(Some(9), &data)),
        r#"{"op":"rpc_result","id":9,"data":[1]}"#
    );
    let (frame, _) = message("a", None, &Data::from_user("4\"2", Content::Text, b"hi"));
    assert_eq!(
        json(&frame),
        serde_json::json!({"op":"message","topic":"a","from":"4\"2","data":"hi"})
    );
}

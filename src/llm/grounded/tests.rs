use super::*;

const SOURCE: &str = "Ibuprofen caused \"severe\" gastric bleeding in a 54-year-old man.";

fn accepts(text: &str) -> Option<GroundedJson> {
    GroundedJson::new(SOURCE).advanced(text.as_bytes())
}

/// An object schema with string properties `keys`, all required.
fn object(keys: &[&str]) -> serde_json::Value {
    let props: serde_json::Map<String, serde_json::Value> =
        keys.iter().map(|k| (k.to_string(), serde_json::json!({"type": "string"}))).collect();
    serde_json::json!({"type": "object", "properties": props, "required": keys})
}

fn schema(value: serde_json::Value) -> ResponseSchema {
    ResponseSchema::from_json_schema(&value)
}

#[test]
fn enum_values_come_from_the_schema_not_the_source() {
    let mut item = object(&["text", "type"]);
    item["properties"]["type"]["enum"] = serde_json::json!(["NAME", "DATE", "DATES"]);
    let entities = schema(serde_json::json!({"type": "array", "items": item}));
    for state in [GroundedJson::new(SOURCE), GroundedJson::json_only()] {
        let state = state.with_schema(entities.clone());
        let doc = r#"[{"text": "54-year-old", "type": "DATE"}, {"text": "man", "type": "DATES"}]"#;
        assert!(state.advanced(doc.as_bytes()).unwrap().is_complete());
        for bad in [r#"[{"type": "TIME""#, r#"[{"type": "DA""#, r#"[{"type": "\"#, r#"[{"text": "x"#] {
            let grounded_text = bad.contains("\"text\"") && state.source.is_none();
            assert_eq!(state.advanced(bad.as_bytes()).is_none(), !grounded_text, "{bad}");
        }
    }
}

#[test]
fn accepts_grounded_documents_and_their_prefixes() {
    let doc = r#"{"pairs": [{"drug": "Ibuprofen", "effect": "gastric bleeding"}], "n": -1.5e3, "ok": true, "x": null, "y": []}"#;
    for end in 0..=doc.len() {
        assert!(accepts(&doc[..end]).is_some(), "prefix {:?}", &doc[..end]);
    }
    assert!(accepts(doc).unwrap().is_complete());
    assert!(accepts(r#"["\"severe\" gastric"]"#).unwrap().is_complete());
    assert!(accepts("{}").unwrap().is_complete());
}

#[test]
fn rejects_ungrounded_or_malformed_output() {
    for bad in [
        r#"{"drug": "Aspirin"}"#,   // not in the source
        r#"{"drug": "ibuprofen"}"#, // case matters: spans are copied
        "```json",                  // fences
        " {",                       // leading whitespace
        r#""Ibuprofen""#,           // top level must be a container
        r#"{"a" 1}"#,               // missing colon
        r#"{"a": 1,}"#,             // trailing comma
        r#"{"a": 1}}"#,             // after the end
        r#"{"a": tru}"#,
        r#"[1] "#, // whitespace after the end
        "[01]",
        "[1.]",
        "[-]",
    ] {
        assert!(accepts(bad).is_none(), "{bad}");
    }
}

#[test]
fn spans_end_on_character_boundaries() {
    let state = GroundedJson::new("café au lait");
    assert!(state.advanced("[\"café\"]".as_bytes()).is_some());
    assert!(state.advanced(&[b'[', b'"', b'c', b'a', b'f', 0xc3, b'"']).is_none());
}

#[test]
fn keys_come_from_the_schema_when_given() {
    let ade = crate::teacher::parse::json_schema(crate::vocab::Task::Ade);
    let state = GroundedJson::new(SOURCE).with_schema(schema(ade));
    let doc = r#"{"drugs": [{"drug": "Ibuprofen", "adverse_events": ["gastric bleeding"]}]}"#;
    assert!(state.advanced(doc.as_bytes()).unwrap().is_complete());
    assert!(state.advanced(br#"{"dru"#).is_some(), "a prefix of a key");
    for bad in [
        r#"{"additionalProperties""#,
        r#"{"dru":"#,
        r#"{"drugss""#,
        r#"{"drugs": [{"drugs""#,                            // a key of another object
        r#"{"drugs": [{"drug": "Ibuprofen"}"#,               // closed without a required key
        r#"{"drugs": [{"drug": ["#,                          // not a string
        r#"{"drugs": [{"drug": "man", "adverse_events": 1"#, // not an array
        r#"{}"#,
        r#"{"drugs": [], ""#, // no key left to write
        r#"{"drugs": [],"#,
    ] {
        assert!(state.advanced(bad.as_bytes()).is_none(), "{bad}");
    }
}

#[test]
fn json_only_frees_values_but_not_keys_or_syntax() {
    let state = GroundedJson::json_only().with_schema(schema(object(&["text", "type"])));
    let doc = r#"{"text": "Aspirin \"x\"", "type": "NAME"}"#;
    assert!(state.advanced(doc.as_bytes()).unwrap().is_complete());
    for bad in [r#"{"additionalProperties""#, "```json", r#"{"text": "a"}}"#] {
        assert!(state.advanced(bad.as_bytes()).is_none(), "{bad}");
    }
}

#[test]
fn every_accepted_prefix_can_continue() {
    // A backslash is only accepted where an escape sequence can follow it.
    assert!(accepts(r#"{"a": "\""#).is_some(), "the source has a quote to escape");
    assert!(GroundedJson::new("no quotes here").advanced(br#"["\"#).is_none());
    let keyed = GroundedJson::new(SOURCE).with_schema(schema(object(&["drug"])));
    assert!(keyed.advanced(br#"{"\"#).is_none(), "schema keys have no escapes");
}

#[test]
fn a_repeated_element_closes_its_array_and_a_repeated_key_is_rejected() {
    assert!(accepts(r#"["gastric bleeding", "gastric"#).is_some(), "a repeat in progress");
    let repeat = accepts(r#"["gastric bleeding", "gastric bleeding""#).expect("a repeat is accepted");
    assert!(repeat.advanced(b",").is_none() && repeat.advanced(b" ,").is_none(), "but nothing may follow it");
    assert!(repeat.advanced(b" ]").unwrap().is_complete(), "except the array's end");
    assert!(accepts(r#"["gastric", "gastric bleeding", "gastric"]"#).unwrap().is_complete(), "a longer span");
    assert!(accepts(r#"["gastric", "gastric bleeding", "gastric", "x"#).is_none());
    // The dead end this replaced: an object element with every key written that can only
    // complete as a repeat. Every prefix continues, and the array ends after it.
    let pair = r#"{"drug": "Ibuprofen", "effect": "gastric bleeding"}"#;
    let doc = format!("[{pair}, {pair}");
    for end in 0..=doc.len() {
        assert!(accepts(&doc[..end]).is_some(), "every prefix continues: {}", &doc[..end]);
    }
    assert!(accepts(&format!("{doc}]")).unwrap().is_complete());
    assert!(accepts(&format!("{doc}, {pair}")).is_none());
    assert!(accepts(&format!(r#"[{pair}, {{"drug": "Ibuprofen", "effect": "bleeding"}}, {pair}]"#)).is_some());
    assert!(accepts("[1, 2, [1], [2], true, null]").unwrap().is_complete());
    for repeated in ["[1, 1, 2", "[true, true, false", "[[], [], [1]", r#"[["a"], ["a"], ["b"]"#] {
        assert!(accepts(repeated).is_none(), "{repeated}");
        assert!(accepts(&format!("{}]", &repeated[..repeated.rfind(',').unwrap()])).is_some(), "{repeated}");
    }
    assert!(accepts(r#"{"drug": "Ibuprofen", "drug""#).is_none(), "a key twice");
    assert!(accepts(r#"[{"drug": "man"}, {"drug": "Ibuprofen"}]"#).unwrap().is_complete(), "keys per object");
}

#[test]
fn depth_is_bounded() {
    assert!(accepts(&"[".repeat(MAX_DEPTH)).is_some());
    assert!(accepts(&"[".repeat(MAX_DEPTH + 1)).is_none());
}

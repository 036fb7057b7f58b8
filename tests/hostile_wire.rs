//! Whatever bytes a client sends the gateway, the request the server gets names the
//! authenticated user and no other, and a client's stream of frames costs the gateway no more
//! memory than one message under its limit. Generated requests (copies of `user_context`,
//! fields of every wire type, keys encoded longer than needed, nested contexts) are checked by
//! decoding the gateway's output as the server would, with prost and the project's protos.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use prost::Message;
use spark_connect_operator::gateway::wire::{Deframer, frame, stamp_user};
use spark_connect_operator::proto::{ConfigRequest, ExecutePlanRequest};

/// A protobuf varint, padded with `extra` redundant continuation bytes (still valid protobuf).
fn varint(out: &mut BytesMut, mut value: u64, extra: usize) {
    let mut bytes = Vec::new();
    while value >= 0x80 {
        bytes.push((value as u8) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
    for _ in 0..extra.min(10 - bytes.len().min(10)) {
        if let Some(last) = bytes.last_mut() {
            *last |= 0x80;
        }
        bytes.push(0);
    }
    out.put_slice(&bytes);
}

/// One generated field: its number, wire type, key padding and value.
#[derive(Clone, Debug)]
enum Field {
    Varint(u32, u64, usize),
    Fixed64(u32, u64),
    Bytes(u32, Vec<u8>, usize),
    Message(u32, Vec<Field>),
    Fixed32(u32, u32),
    /// A wire type protobuf has no value for here (groups, 6, 7).
    Odd(u32, u8),
}

fn encode(fields: &[Field]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for field in fields {
        let key = |out: &mut BytesMut, number: u32, wire: u8, extra: usize| {
            varint(out, (u64::from(number) << 3) | u64::from(wire), extra)
        };
        match field {
            Field::Varint(n, v, extra) => {
                key(&mut out, *n, 0, *extra);
                varint(&mut out, *v, 0);
            }
            Field::Fixed64(n, v) => {
                key(&mut out, *n, 1, 0);
                out.put_u64_le(*v);
            }
            Field::Bytes(n, v, extra) => {
                key(&mut out, *n, 2, *extra);
                varint(&mut out, v.len() as u64, 0);
                out.put_slice(v);
            }
            Field::Message(n, inner) => {
                let inner = encode(inner);
                key(&mut out, *n, 2, 0);
                varint(&mut out, inner.len() as u64, 0);
                out.put_slice(&inner);
            }
            Field::Fixed32(n, v) => {
                key(&mut out, *n, 5, 0);
                out.put_u32_le(*v);
            }
            Field::Odd(n, wire) => key(&mut out, *n, *wire, 0),
        }
    }
    out.to_vec()
}

/// Field numbers a request and its user context use, and some others.
fn number() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => proptest::sample::select(vec![1u32, 2, 3, 4, 8, 999]),
        1 => 1u32..(1 << 29),
    ]
}

fn text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::sample::select(vec!["root", "mallory", "alice", "", "s-1"])
            .prop_map(|s| s.as_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

fn field() -> impl Strategy<Value = Field> {
    let leaf = prop_oneof![
        (number(), any::<u64>(), 0usize..3).prop_map(|(n, v, e)| Field::Varint(n, v, e)),
        (number(), any::<u64>()).prop_map(|(n, v)| Field::Fixed64(n, v)),
        (number(), text(), 0usize..3).prop_map(|(n, v, e)| Field::Bytes(n, v, e)),
        (number(), any::<u32>()).prop_map(|(n, v)| Field::Fixed32(n, v)),
        (number(), proptest::sample::select(vec![3u8, 4, 6, 7]))
            .prop_map(|(n, w)| Field::Odd(n, w)),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        (number(), proptest::collection::vec(inner, 0..4))
            .prop_map(|(n, fields)| Field::Message(n, fields))
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 20000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_stamped_request_names_the_authenticated_user_and_no_other(
        fields in proptest::collection::vec(field(), 0..6),
        user in "[a-z]{1,8}(@example\\.com)?",
    ) {
        let request = encode(&fields);
        let Ok(stamped) = stamp_user(&request, &user) else {
            return Ok(()); // refused: nothing reaches the server
        };
        let mut decoded_any = false;
        if let Ok(config) = ConfigRequest::decode(&stamped.message[..]) {
            let context = config.user_context.unwrap_or_default();
            prop_assert_eq!(&context.user_id, &user);
            prop_assert_eq!(&context.user_name, &user);
            prop_assert_eq!(Some(config.session_id), stamped.session_id.clone().or(Some(String::new())));
            decoded_any = true;
        }
        if let Ok(execute) = ExecutePlanRequest::decode(&stamped.message[..]) {
            let context = execute.user_context.unwrap_or_default();
            prop_assert_eq!(&context.user_id, &user);
            prop_assert_eq!(&context.user_name, &user);
            decoded_any = true;
        }
        // A request the server could read before is one it can read after.
        if ConfigRequest::decode(&request[..]).is_ok() {
            prop_assert!(decoded_any, "a readable request became unreadable");
        }
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_a_stream_holds_under_one_message(
        messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6),
        cuts in proptest::collection::vec(1usize..64, 0..40),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        const LIMIT: usize = 256;
        let mut stream: Vec<u8> = messages.iter().flat_map(|m| frame(m).to_vec()).collect();
        stream.extend_from_slice(&garbage);
        let mut deframer = Deframer::new(LIMIT);
        let mut out = Vec::new();
        let mut refused = false;
        let mut rest = &stream[..];
        let mut cuts = cuts.into_iter().chain(std::iter::repeat(64));
        while !rest.is_empty() && !refused {
            let n = cuts.next().unwrap_or(64).min(rest.len());
            deframer.push(&rest[..n]);
            rest = &rest[n..];
            loop {
                match deframer.next_message() {
                    Ok(Some(message)) => out.push(message.to_vec()),
                    Ok(None) => break,
                    Err(_) => {
                        refused = true;
                        break;
                    }
                }
            }
            if !refused {
                prop_assert!(deframer.pending() < 5 + LIMIT, "holds {} bytes", deframer.pending());
            }
        }
        // Every message under the limit before the first refusal came out whole and in order.
        let expected: Vec<Vec<u8>> = messages.iter().take_while(|m| m.len() <= LIMIT).cloned().collect();
        prop_assert_eq!(&out[..expected.len().min(out.len())], &expected[..expected.len().min(out.len())]);
        if !refused && messages.iter().all(|m| m.len() <= LIMIT) {
            prop_assert!(out.len() >= messages.len());
            prop_assert_eq!(&out[..messages.len()], &messages[..]);
        }
    }
}

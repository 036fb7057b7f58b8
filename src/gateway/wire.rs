//! The bytes of a Spark Connect call as far as the gateway reads them: gRPC length-prefixed
//! frames and the top-level protobuf fields every request shares (`session_id` = 1,
//! `user_context` = 2). Everything else passes through as it came: decoding and re-encoding
//! whole messages would drop fields this build does not know.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Field of `session_id` in every `SparkConnectService` request.
const SESSION_ID: u32 = 1;
/// Field of `user_context` in every `SparkConnectService` request.
const USER_CONTEXT: u32 = 2;
/// `UserContext.user_id`.
const USER_ID: u32 = 1;
/// `UserContext.user_name`.
const USER_NAME: u32 = 2;

/// A request message the gateway cannot pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not a well-formed protobuf message.
    #[error("the request is not a well-formed Spark Connect message: {0}")]
    Malformed(&'static str),
    /// A compressed message cannot be checked for its user.
    #[error("compressed request messages are not accepted by the gateway")]
    Compressed,
    /// Larger than the gateway accepts.
    #[error("a request message of {size} bytes is larger than the gateway's limit of {limit}")]
    TooLarge {
        /// Announced size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// Splits a byte stream into gRPC messages (1 flag byte, 4 length bytes, the message).
#[derive(Debug)]
pub struct Deframer {
    buffer: BytesMut,
    limit: usize,
}

impl Deframer {
    /// A deframer refusing messages over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            limit,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next whole message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, WireError> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        if self.buffer[0] != 0 {
            return Err(WireError::Compressed);
        }
        let size = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if size > self.limit {
            return Err(WireError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        if self.buffer.len() < 5 + size {
            return Ok(None);
        }
        self.buffer.advance(5);
        Ok(Some(self.buffer.split_to(size).freeze()))
    }

    /// Bytes of an incomplete message still held.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

/// Frames one message for gRPC (uncompressed).
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// One top-level field: its number and the bytes of the whole field (key and value).
struct Field<'a> {
    number: u32,
    /// The value of a length-delimited field, else empty.
    payload: &'a [u8],
    raw: &'a [u8],
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes
            .get(*at)
            .ok_or(WireError::Malformed("a varint runs past the end"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::Malformed("a varint is longer than ten bytes"))
}

fn take(bytes: &[u8], at: &mut usize, n: u64) -> Result<(), WireError> {
    let n = usize::try_from(n).map_err(|_| WireError::Malformed("a length overflows"))?;
    let end = at
        .checked_add(n)
        .filter(|end| *end <= bytes.len())
        .ok_or(WireError::Malformed("a field runs past the end"))?;
    *at = end;
    Ok(())
}

/// The top-level fields of a message, in order.
fn fields(message: &[u8]) -> Result<Vec<Field<'_>>, WireError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < message.len() {
        let start = at;
        let key = varint(message, &mut at)?;
        let number = u32::try_from(key >> 3)
            .map_err(|_| WireError::Malformed("a field number overflows"))?;
        if number == 0 {
            return Err(WireError::Malformed("field number 0"));
        }
        let mut payload: &[u8] = &[];
        match key & 7 {
            0 => {
                varint(message, &mut at)?;
            }
            1 => take(message, &mut at, 8)?,
            2 => {
                let len = varint(message, &mut at)?;
                let from = at;
                take(message, &mut at, len)?;
                payload = &message[from..at];
            }
            5 => take(message, &mut at, 4)?,
            _ => return Err(WireError::Malformed("a group or unknown wire type")),
        }
        out.push(Field {
            number,
            payload,
            raw: &message[start..at],
        });
    }
    Ok(out)
}

fn put_key(out: &mut BytesMut, number: u32, wire_type: u8) {
    put_varint(out, (u64::from(number) << 3) | u64::from(wire_type));
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

fn put_bytes(out: &mut BytesMut, number: u32, value: &[u8]) {
    put_key(out, number, 2);
    put_varint(out, value.len() as u64);
    out.put_slice(value);
}

/// What the gateway reads from a request, and the request with its user replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    /// The request as sent on: every field as it came except `user_context`.
    pub message: Bytes,
    /// `session_id`, when present and UTF-8.
    pub session_id: Option<String>,
}

/// Replaces `user_context` of a request with the authenticated user (as `user_id` and
/// `user_name`), keeping the client's other `UserContext` fields (its extensions). Every copy
/// of field 2 is removed first: protobuf merges repeated copies of a message field, so a second
/// copy could otherwise carry another user.
pub fn stamp_user(message: &[u8], user: &str) -> Result<Stamped, WireError> {
    let mut session_id = None;
    let mut out = BytesMut::with_capacity(message.len() + user.len() * 2 + 8);
    let mut context = BytesMut::new();
    put_bytes(&mut context, USER_ID, user.as_bytes());
    put_bytes(&mut context, USER_NAME, user.as_bytes());
    for field in fields(message)? {
        match field.number {
            USER_CONTEXT => {
                for inner in fields(field.payload)? {
                    if inner.number != USER_ID && inner.number != USER_NAME {
                        context.put_slice(inner.raw);
                    }
                }
            }
            SESSION_ID => {
                session_id = std::str::from_utf8(field.payload).ok().map(str::to_owned);
                out.put_slice(field.raw);
            }
            _ => out.put_slice(field.raw),
        }
    }
    put_bytes(&mut out, USER_CONTEXT, &context);
    Ok(Stamped {
        message: out.freeze(),
        session_id,
    })
}

/// A string field of a message (the last copy wins, as in protobuf).
pub fn string_field(message: &[u8], number: u32) -> Option<String> {
    let fields = fields(message).ok()?;
    let field = fields.iter().rev().find(|f| f.number == number)?;
    std::str::from_utf8(field.payload).ok().map(str::to_owned)
}

/// A message field's bytes (the last copy; enough for the shapes audited here).
pub fn message_field(message: &[u8], number: u32) -> Option<&[u8]> {
    let fields = fields(message).ok()?;
    fields
        .into_iter()
        .rev()
        .find(|f| f.number == number)
        .map(|f| f.payload)
}

/// The first field number set in a message (a oneof's case, for `Relation` and `Command`),
/// skipping `skip` (a `Relation`'s `common`).
pub fn first_field(message: &[u8], skip: u32) -> Option<u32> {
    fields(message)
        .ok()?
        .iter()
        .map(|f| f.number)
        .find(|n| *n != skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_context_of(message: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let context = message_field(message, USER_CONTEXT).expect("a user_context");
        fields(context)
            .expect("well-formed")
            .iter()
            .map(|f| (f.number, f.payload.to_vec()))
            .collect()
    }

    fn request(session: &str, user: &str, extra: &[u8]) -> Vec<u8> {
        let mut context = BytesMut::new();
        put_bytes(&mut context, USER_ID, user.as_bytes());
        put_bytes(&mut context, 999, b"ext");
        let mut out = BytesMut::new();
        put_bytes(&mut out, SESSION_ID, session.as_bytes());
        put_bytes(&mut out, USER_CONTEXT, &context);
        out.put_slice(extra);
        out.to_vec()
    }

    #[test]
    fn the_authenticated_user_replaces_whatever_the_client_claimed() {
        let mut tail = BytesMut::new();
        put_bytes(&mut tail, 3, b"plan bytes");
        let original = request("8c5e4c1e-0000-4000-8000-000000000001", "mallory", &tail);
        let stamped = stamp_user(&original, "alice").expect("stamps");
        assert_eq!(
            stamped.session_id.as_deref(),
            Some("8c5e4c1e-0000-4000-8000-000000000001")
        );
        let context = user_context_of(&stamped.message);
        assert!(context.contains(&(USER_ID, b"alice".to_vec())));
        assert!(context.contains(&(USER_NAME, b"alice".to_vec())));
        assert!(context.contains(&(999, b"ext".to_vec())), "extensions kept");
        assert!(!context.iter().any(|(_, v)| v == b"mallory"));
        assert_eq!(message_field(&stamped.message, 3), Some(&b"plan bytes"[..]));
    }

    #[test]
    fn a_second_user_context_cannot_smuggle_another_user() {
        let mut second = BytesMut::new();
        let mut context = BytesMut::new();
        put_bytes(&mut context, USER_ID, b"root");
        put_bytes(&mut second, USER_CONTEXT, &context);
        let original = request("s", "mallory", &second);
        let stamped = stamp_user(&original, "alice").expect("stamps");
        let copies = fields(&stamped.message)
            .expect("well-formed")
            .iter()
            .filter(|f| f.number == USER_CONTEXT)
            .count();
        assert_eq!(copies, 1);
        assert!(
            !user_context_of(&stamped.message)
                .iter()
                .any(|(_, v)| v == b"root")
        );
    }

    #[test]
    fn a_request_without_user_context_gets_one() {
        let mut out = BytesMut::new();
        put_bytes(&mut out, SESSION_ID, b"s");
        let stamped = stamp_user(&out, "bob").expect("stamps");
        assert!(user_context_of(&stamped.message).contains(&(USER_ID, b"bob".to_vec())));
    }

    #[test]
    fn unknown_fields_of_every_wire_type_pass_through_unchanged() {
        let mut tail = BytesMut::new();
        put_key(&mut tail, 40, 0);
        put_varint(&mut tail, 300);
        put_key(&mut tail, 41, 1);
        tail.put_u64(7);
        put_key(&mut tail, 42, 5);
        tail.put_u32(9);
        let original = request("s", "x", &tail);
        let stamped = stamp_user(&original, "alice").expect("stamps");
        assert!(stamped.message.windows(tail.len()).any(|w| w == &tail[..]));
    }

    #[test]
    fn malformed_messages_are_refused_not_passed_on() {
        assert!(stamp_user(&[0x0a, 0x05, b'a'], "u").is_err(), "truncated");
        assert!(stamp_user(&[0x0b], "u").is_err(), "group wire type");
        assert!(stamp_user(&[0xff; 11], "u").is_err(), "endless varint");
        assert!(stamp_user(&[0x00, 0x01], "u").is_err(), "field number 0");
    }

    #[test]
    fn the_deframer_waits_for_whole_messages_and_refuses_compressed_or_huge_ones() {
        let mut deframer = Deframer::new(16);
        let framed = frame(b"hello");
        deframer.push(&framed[..3]);
        assert_eq!(deframer.next_message(), Ok(None));
        deframer.push(&framed[3..]);
        deframer.push(&frame(b"world"));
        assert_eq!(
            deframer.next_message(),
            Ok(Some(Bytes::from_static(b"hello")))
        );
        assert_eq!(
            deframer.next_message(),
            Ok(Some(Bytes::from_static(b"world")))
        );
        assert_eq!(deframer.next_message(), Ok(None));
        assert_eq!(deframer.pending(), 0);

        let mut compressed = Deframer::new(16);
        compressed.push(&[1, 0, 0, 0, 1, 0]);
        assert_eq!(compressed.next_message(), Err(WireError::Compressed));

        let mut huge = Deframer::new(16);
        huge.push(&[0, 0, 0, 1, 0]);
        assert!(matches!(
            huge.next_message(),
            Err(WireError::TooLarge { size: 256, .. })
        ));
    }

    #[test]
    fn the_first_oneof_case_skips_common() {
        let mut relation = BytesMut::new();
        put_bytes(&mut relation, 1, b"common");
        put_bytes(&mut relation, 10, b"sql");
        assert_eq!(first_field(&relation, 1), Some(10));
        assert_eq!(string_field(&relation, 10).as_deref(), Some("sql"));
    }
}

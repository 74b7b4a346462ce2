//! The part of PostgreSQL's frontend/backend protocol that lock sessions
//! speak, as a pure codec: bytes in, bytes out, no I/O (that is
//! [`crate::pg::wire`]'s). Tested on bytes, without a server.
//!
//! Frontend: Bind (binary parameters: integers and one-dimensional integer
//! arrays), Execute and Sync for a prepared statement; Query and Sync.
//! Backend: every message a lock session can meet after its start-up,
//! decoded with `postgres-protocol` (tokio-postgres's own codec) into
//! [`Backend`]: data rows of integers and booleans, ErrorResponse and
//! NoticeResponse with all their fields, ParameterStatus,
//! NotificationResponse, ReadyForQuery; a column of a width no integer has
//! is a protocol error, never a made-up value.

use bytes::{BufMut, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{DataRowBody, ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio_postgres::error::SqlState;

use crate::error::{MoreFields, QueryError, ServerError};

/// One parameter of a prepared statement, sent in binary.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    I16(i16),
    I32(i32),
    I64(i64),
    I16s(&'a [i16]),
    I32s(&'a [i32]),
    I64s(&'a [i64]),
}

/// The answer to one request: every column of every row, in order, as
/// integers (a boolean is 0 or 1; NULL is `None`).
pub(crate) type Values = Vec<Option<i64>>;

/// Bind (unnamed portal) of prepared statement `name` with `params` in
/// binary and results in binary, Execute (all rows), Sync.
pub(crate) fn execute(name: &str, params: &[Param<'_>], buf: &mut BytesMut) {
    buf.put_u8(b'B');
    let start = buf.len();
    buf.put_i32(0);
    buf.put_u8(0); // unnamed portal
    buf.put_slice(name.as_bytes());
    buf.put_u8(0);
    buf.put_i16(1); // one format code for all parameters: binary
    buf.put_i16(1);
    buf.put_i16(params.len() as i16);
    for p in params {
        encode(p, buf);
    }
    buf.put_i16(1); // one format code for all results: binary
    buf.put_i16(1);
    let len = (buf.len() - start) as i32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    // Execute the unnamed portal, all rows; then Sync.
    buf.put_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0, b'S', 0, 0, 0, 4]);
}

/// A simple-protocol Query (statements without parameters).
pub(crate) fn query(sql: &str, buf: &mut BytesMut) -> Result<(), QueryError> {
    if sql.contains('\0') {
        return Err(QueryError::Protocol("a query with a NUL byte".into()));
    }
    frontend::query(sql, buf).map_err(QueryError::Io)
}

/// A Sync on its own.
pub(crate) fn sync(buf: &mut BytesMut) {
    frontend::sync(buf);
}

/// OIDs of the array element types.
const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;

fn encode(p: &Param<'_>, buf: &mut BytesMut) {
    match *p {
        Param::I16(v) => {
            buf.put_i32(2);
            buf.put_i16(v);
        }
        Param::I32(v) => {
            buf.put_i32(4);
            buf.put_i32(v);
        }
        Param::I64(v) => {
            buf.put_i32(8);
            buf.put_i64(v);
        }
        Param::I16s(v) => array(buf, INT2, v.len(), 2, |b, i| b.put_i16(v[i])),
        Param::I32s(v) => array(buf, INT4, v.len(), 4, |b, i| b.put_i32(v[i])),
        Param::I64s(v) => array(buf, INT8, v.len(), 8, |b, i| b.put_i64(v[i])),
    }
}

/// A one-dimensional array without NULLs, in binary.
fn array(
    buf: &mut BytesMut,
    oid: u32,
    n: usize,
    size: i32,
    mut put: impl FnMut(&mut BytesMut, usize),
) {
    let dims = if n == 0 { 0 } else { 1 };
    let len = 12 + dims * 8 + n as i32 * (4 + size);
    buf.put_i32(len);
    buf.put_i32(dims);
    buf.put_i32(0); // no NULLs
    buf.put_u32(oid);
    if n > 0 {
        buf.put_i32(n as i32);
        buf.put_i32(1); // lower bound
    }
    for i in 0..n {
        buf.put_i32(size);
        put(buf, i);
    }
}

/// A backend message, as a lock session meets it.
#[derive(Debug)]
pub(crate) enum Backend {
    /// A data row (its values: [`row_values`]).
    DataRow(DataRowBody),
    /// ErrorResponse.
    Error(ServerError),
    /// NoticeResponse: a warning or notice about the last statement.
    Notice(ServerError),
    /// ParameterStatus: a server parameter's new value.
    ParameterStatus { name: String, value: String },
    /// NotificationResponse of a `LISTEN`ed channel.
    Notification { channel: String, payload: String },
    /// ReadyForQuery, with the transaction status (`I` idle, `T` in a
    /// transaction, `E` in a failed one).
    ReadyForQuery(u8),
    /// A message that completes a step and carries nothing the session
    /// needs (BindComplete, CommandComplete, NoData, …).
    Step,
}

/// Decodes the next whole message from `buf` (consuming it), or `None` if
/// `buf` does not hold one yet.
#[inline]
pub(crate) fn decode(buf: &mut BytesMut) -> Result<Option<Backend>, QueryError> {
    let Some(message) = Message::parse(buf)? else {
        return Ok(None);
    };
    let text = |b: std::io::Result<&str>| b.map(str::to_owned).map_err(QueryError::Io);
    Ok(Some(match message {
        Message::DataRow(row) => Backend::DataRow(row),
        Message::ErrorResponse(body) => Backend::Error(server_error(&mut body.fields())?),
        Message::NoticeResponse(body) => Backend::Notice(server_error(&mut body.fields())?),
        Message::ParameterStatus(p) => Backend::ParameterStatus {
            name: text(p.name())?,
            value: text(p.value())?,
        },
        Message::NotificationResponse(n) => Backend::Notification {
            channel: text(n.channel())?,
            payload: text(n.message())?,
        },
        Message::ReadyForQuery(body) => Backend::ReadyForQuery(body.status()),
        Message::BindComplete
        | Message::ParseComplete
        | Message::CloseComplete
        | Message::CommandComplete(_)
        | Message::EmptyQueryResponse
        | Message::NoData
        | Message::PortalSuspended
        | Message::RowDescription(_)
        | Message::ParameterDescription(_) => Backend::Step,
        _ => return Err(QueryError::Protocol("unexpected message".into())),
    }))
}

/// Appends a data row's values to `out`: booleans and integers in binary.
#[inline]
pub(crate) fn row_values(row: &DataRowBody, out: &mut Values) -> Result<(), QueryError> {
    let buf = row.buffer();
    let mut ranges = row.ranges();
    while let Some(range) = ranges.next()? {
        out.push(match range {
            Some(r) => Some(int(&buf[r])?),
            None => None,
        });
    }
    Ok(())
}

/// A binary column as an integer: bool (1 byte), int2, int4, int8.
fn int(bytes: &[u8]) -> Result<i64, QueryError> {
    Ok(match *bytes {
        [b] => b as i64,
        [a, b] => i16::from_be_bytes([a, b]) as i64,
        [a, b, c, d] => i32::from_be_bytes([a, b, c, d]) as i64,
        [a, b, c, d, e, f, g, h] => i64::from_be_bytes([a, b, c, d, e, f, g, h]),
        _ => {
            return Err(QueryError::Protocol(format!(
                "a column of {} bytes where an integer was expected",
                bytes.len()
            )))
        }
    })
}

/// Reads the fields of an ErrorResponse or NoticeResponse.
fn server_error(fields: &mut ErrorFields<'_>) -> Result<ServerError, QueryError> {
    let mut e = ServerError::default();
    let mut more = MoreFields::default();
    let mut localized = None;
    while let Some(field) = fields.next()? {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'S' => localized = Some(value),
            b'V' => e.severity = value,
            b'C' => e.code = SqlState::from_code(&value),
            b'M' => e.message = value,
            b'D' => more.detail = Some(value),
            b'H' => more.hint = Some(value),
            b'P' => more.position = value.parse().ok(),
            b'W' => more.context = Some(value),
            _ => {}
        }
    }
    let some = more.detail.is_some()
        || more.hint.is_some()
        || more.position.is_some()
        || more.context.is_some();
    e.more = some.then(|| Box::new(more));
    if e.severity.is_empty() {
        e.severity = localized.unwrap_or_default();
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use postgres_protocol::IsNull;

    /// Bind/Execute/Sync as `postgres_protocol::message::frontend` writes
    /// them, byte for byte, for every kind of parameter.
    #[test]
    fn execute_matches_postgres_protocol() {
        let (a16, a32, a64) = ([1i16, -2], [3i32, -4, 5], [i64::MIN, 0, i64::MAX]);
        let params = [
            Param::I16(-7),
            Param::I32(1 << 20),
            Param::I64(-(1 << 40)),
            Param::I16s(&a16),
            Param::I32s(&a32),
            Param::I64s(&a64),
            Param::I64s(&[]),
        ];
        let mut ours = BytesMut::new();
        execute("al1_2_3", &params, &mut ours);

        let mut theirs = BytesMut::new();
        let serializer = |p: &Param<'_>,
                          buf: &mut BytesMut|
         -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
            let mut tmp = BytesMut::new();
            encode(p, &mut tmp);
            tmp.advance(4); // postgres-protocol writes the length itself
            buf.put_slice(&tmp);
            Ok(IsNull::No)
        };
        frontend::bind(
            "",
            "al1_2_3",
            [1i16],
            params.iter(),
            serializer,
            [1i16],
            &mut theirs,
        )
        .map_err(|_| ())
        .unwrap();
        frontend::execute("", 0, &mut theirs).unwrap();
        frontend::sync(&mut theirs);
        assert_eq!(&ours[..], &theirs[..]);
    }

    /// The arrays' binary form is what PostgreSQL's `array_send` writes:
    /// dimensions, no NULLs, the element OID, then length-prefixed elements.
    #[test]
    fn arrays_are_encoded_as_array_send_does() {
        let mut buf = BytesMut::new();
        encode(&Param::I32s(&[7, -1]), &mut buf);
        let expected: &[u8] = &[
            0, 0, 0, 36, // length of what follows
            0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 23, // 1 dim, no NULLs, int4
            0, 0, 0, 2, 0, 0, 0, 1, // 2 elements, lower bound 1
            0, 0, 0, 4, 0, 0, 0, 7, 0, 0, 0, 4, 255, 255, 255, 255,
        ];
        assert_eq!(&buf[..], expected);
        let mut empty = BytesMut::new();
        encode(&Param::I64s(&[]), &mut empty);
        assert_eq!(
            &empty[..],
            &[0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20]
        );
    }

    /// A backend message: tag, length, body.
    fn message(tag: u8, body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u8(tag);
        buf.put_i32(body.len() as i32 + 4);
        buf.put_slice(body);
        buf
    }

    fn data_row(columns: &[Option<&[u8]>]) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_i16(columns.len() as i16);
        for c in columns {
            match c {
                Some(bytes) => {
                    body.put_i32(bytes.len() as i32);
                    body.put_slice(bytes);
                }
                None => body.put_i32(-1),
            }
        }
        message(b'D', &body)
    }

    #[test]
    fn data_rows_decode_every_integer_width_and_null() {
        let mut buf = data_row(&[
            Some(&[1]),
            Some(&(-2i16).to_be_bytes()),
            Some(&(-3i32).to_be_bytes()),
            Some(&i64::MIN.to_be_bytes()),
            None,
        ]);
        let Some(Backend::DataRow(row)) = decode(&mut buf).unwrap() else {
            panic!("not a data row");
        };
        let mut values = Values::new();
        row_values(&row, &mut values).unwrap();
        assert_eq!(values, [Some(1), Some(-2), Some(-3), Some(i64::MIN), None]);
        assert!(buf.is_empty());
    }

    /// A column of a width no integer has is a protocol error, not 0.
    #[test]
    fn an_unexpected_column_width_is_a_protocol_error() {
        let mut buf = data_row(&[Some(&[0, 0, 1])]);
        let Some(Backend::DataRow(row)) = decode(&mut buf).unwrap() else {
            panic!("not a data row");
        };
        let e = row_values(&row, &mut Values::new()).unwrap_err();
        assert!(matches!(e, QueryError::Protocol(_)), "{e:?}");
    }

    fn fields(pairs: &[(u8, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in pairs {
            body.push(*t);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        body
    }

    #[test]
    fn error_responses_keep_every_field() {
        let body = fields(&[
            (b'S', "FEHLER"),
            (b'V', "ERROR"),
            (b'C', "55P03"),
            (b'M', "canceling statement due to lock timeout"),
            (b'D', "the detail"),
            (b'H', "a hint"),
            (b'P', "17"),
            (b'W', "SQL statement"),
            (b'F', "proc.c"),
        ]);
        let mut buf = message(b'E', &body);
        let Some(Backend::Error(e)) = decode(&mut buf).unwrap() else {
            panic!("not an error");
        };
        assert_eq!(e.severity(), "ERROR");
        assert_eq!(e.code(), &SqlState::LOCK_NOT_AVAILABLE);
        assert_eq!(e.message(), "canceling statement due to lock timeout");
        assert_eq!(e.detail(), Some("the detail"));
        assert_eq!(e.hint(), Some("a hint"));
        assert_eq!(e.position(), Some(17));
        assert!(!e.ends_session());
        // Without V (servers before 9.6), the localized severity stands in.
        let mut old = message(
            b'E',
            &fields(&[(b'S', "FATAL"), (b'C', "57P01"), (b'M', "bye")]),
        );
        let Some(Backend::Error(e)) = decode(&mut old).unwrap() else {
            panic!("not an error");
        };
        assert!(e.ends_session());
    }

    #[test]
    fn notices_parameters_notifications_and_ready() {
        let mut buf = message(
            b'N',
            &fields(&[(b'V', "WARNING"), (b'C', "01000"), (b'M', "careful")]),
        );
        buf.extend_from_slice(&message(b'S', b"application_name\0app\0"));
        let mut n = BytesMut::new();
        n.put_i32(4242);
        n.put_slice(b"advisory_locked\x0012345\x00");
        buf.extend_from_slice(&message(b'A', &n));
        buf.extend_from_slice(&message(b'Z', b"I"));
        buf.extend_from_slice(&message(b'2', b"")); // BindComplete
        let mut all = Vec::new();
        while let Some(m) = decode(&mut buf).unwrap() {
            all.push(m);
        }
        assert!(matches!(&all[0], Backend::Notice(e) if e.message() == "careful"));
        assert!(
            matches!(&all[1], Backend::ParameterStatus { name, value } if name == "application_name" && value == "app")
        );
        assert!(
            matches!(&all[2], Backend::Notification { channel, payload } if channel == "advisory_locked" && payload == "12345")
        );
        assert!(matches!(all[3], Backend::ReadyForQuery(b'I')));
        assert!(matches!(all[4], Backend::Step));
        assert_eq!(all.len(), 5);
    }

    /// Half a message decodes to nothing yet, and then to the message.
    #[test]
    fn partial_messages_wait_for_the_rest() {
        let whole = message(b'Z', b"T");
        let mut buf = BytesMut::from(&whole[..3]);
        assert!(decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&whole[3..]);
        assert!(matches!(
            decode(&mut buf).unwrap(),
            Some(Backend::ReadyForQuery(b'T'))
        ));
    }

    /// A message a session never expects (CopyInResponse) is an error.
    #[test]
    fn unexpected_messages_are_protocol_errors() {
        let mut buf = message(b'G', &[0, 0, 0]);
        assert!(matches!(decode(&mut buf), Err(QueryError::Protocol(_))));
    }
}

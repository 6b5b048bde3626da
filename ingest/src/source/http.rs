//! Bodies of `POST /v1/events`: decompression under a cap, then framing into items (NDJSON lines or the
//! elements of a JSON array). Pure and synchronous; the server that calls it lives with the binary.
//!
//! Items come out as [`Line`]s (ranges of the decoded body), so the same contract check judges a line
//! from a file, a Kafka record and an HTTP item. An item over the event cap is marked oversize, exactly
//! as [`crate::source::LineReader`] marks a long line, and is refused one by one, not the whole body.

use std::borrow::Cow;
use std::io::Read;

use serde_json::value::RawValue;

use crate::source::Line;

/// How a body is split into events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One event per line.
    Ndjson,
    /// `application/json`: an array of events, or one event object.
    Json,
}

/// A body refused as a whole (a per-item problem is never one of these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// A `Content-Encoding` vigil does not decode.
    #[error("unsupported Content-Encoding {0:?}: send identity, gzip or zstd")]
    Encoding(String),
    /// A `Content-Type` that is not a JSON framing.
    #[error(
        "unsupported Content-Type {0:?}: send application/x-ndjson (one event per line) or application/json (an array of events)"
    )]
    ContentType(String),
    /// The body, as sent or once decompressed, is over its cap.
    #[error("body is over the limit of {limit} bytes{}", if *.decoded { " once decompressed" } else { "" })]
    TooLarge {
        /// The cap.
        limit: usize,
        /// Whether the cap that was hit is the decompressed one.
        decoded: bool,
    },
    /// The compressed stream is broken.
    #[error("body is not valid {encoding}: {detail}")]
    Corrupt {
        /// `gzip` or `zstd`.
        encoding: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// `application/json` that is neither an array nor an object.
    #[error("body is not a JSON array of events: {0}")]
    NotArray(String),
    /// More items (lines, or array elements) than one request may carry.
    #[error("body holds more than {limit} items (lines or array elements): split it into several requests")]
    TooManyItems {
        /// The cap.
        limit: usize,
    },
}

impl BodyError {
    /// The HTTP status that says what is wrong.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::Encoding(_) | BodyError::ContentType(_) => 415,
            BodyError::TooLarge { .. } | BodyError::TooManyItems { .. } => 413,
            BodyError::Corrupt { .. } | BodyError::NotArray(_) => 400,
        }
    }
}

/// The framing a `Content-Type` asks for. A missing type (or curl's default form encoding) is read by
/// the body's first byte: `[` is an array, anything else NDJSON, so `curl --data-binary @events.ndjson`
/// works without `-H`.
pub fn framing_for(content_type: Option<&str>, body: &[u8]) -> Result<Framing, BodyError> {
    // curl sends form encoding unless told otherwise; a JSON body sent that way means "not said".
    let content_type = content_type.filter(|ct| !ct.starts_with("application/x-www-form-urlencoded"));
    let Some(ct) = content_type else {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        return Ok(if first == Some(&b'[') { Framing::Json } else { Framing::Ndjson });
    };
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(Framing::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines"
        | "text/plain"
        | "" => Ok(Framing::Ndjson),
        _ => Err(BodyError::ContentType(ct.to_owned())),
    }
}

/// Decompresses `body` as its `Content-Encoding` says, refusing to produce more than `limit` bytes (so a
/// small bomb cannot take the memory a large body is refused for).
pub fn decode_body<'a>(
    encoding: Option<&str>,
    body: &'a [u8],
    limit: usize,
) -> Result<Cow<'a, [u8]>, BodyError> {
    let enc = encoding.map(|e| e.trim().to_ascii_lowercase()).unwrap_or_default();
    let (reader, name): (Box<dyn Read + 'a>, &'static str) = match enc.as_str() {
        "" | "identity" => {
            return if body.len() > limit {
                Err(BodyError::TooLarge { limit, decoded: true })
            } else {
                Ok(Cow::Borrowed(body))
            };
        }
        "gzip" | "x-gzip" => (Box::new(flate2::read::MultiGzDecoder::new(body)), "gzip"),
        "zstd" => match zstd::stream::read::Decoder::new(body) {
            Ok(d) => (Box::new(d), "zstd"),
            Err(e) => return Err(BodyError::Corrupt { encoding: "zstd", detail: e.to_string() }),
        },
        other => return Err(BodyError::Encoding(other.to_owned())),
    };
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Corrupt { encoding: name, detail: e.to_string() })?;
    if out.len() > limit {
        return Err(BodyError::TooLarge { limit, decoded: true });
    }
    Ok(Cow::Owned(out))
}

/// Splits a decoded body into items, numbered from 1 in `position`. An item longer than `max_item`
/// keeps its full range and is marked oversize; blank NDJSON lines are items too (the caller skips them),
/// so line numbers in errors match the client's file. A body of more than `max_items` items is refused
/// before anything is kept for them: every later stage holds something per item, and a few kilobytes of
/// gzip can inflate into tens of millions of empty lines.
pub fn split(
    framing: Framing,
    body: &[u8],
    max_item: usize,
    max_items: usize,
) -> Result<Vec<Line>, BodyError> {
    let too_many = BodyError::TooManyItems { limit: max_items };
    if matches!(framing, Framing::Ndjson) {
        let lines =
            memchr::memchr_iter(b'\n', body).count() + usize::from(body.last().is_some_and(|b| *b != b'\n'));
        if lines > max_items {
            return Err(too_many);
        }
    }
    let mut items = Vec::new();
    let mut push = |start: usize, end: usize| {
        let len = end - start;
        let position = items.len() as u64 + 1;
        items.push(Line { start, end, position, oversize: (len > max_item).then_some(len as u64) });
    };
    match framing {
        Framing::Ndjson => {
            let mut start = 0;
            for nl in memchr::memchr_iter(b'\n', body) {
                push(start, nl);
                start = nl + 1;
            }
            if start < body.len() {
                push(start, body.len());
            }
        }
        Framing::Json => {
            let text = body.trim_ascii();
            if text.first() == Some(&b'{') {
                let offset = text.as_ptr() as usize - body.as_ptr() as usize;
                push(offset, offset + text.len());
            } else {
                let Capped(elements) = Capped::parse(body, max_items)?;
                for raw in elements {
                    let offset = raw.get().as_ptr() as usize - body.as_ptr() as usize;
                    push(offset, offset + raw.get().len());
                }
            }
        }
    }
    Ok(items)
}

/// The elements of a JSON array, refused past a cap while they are read (not after).
struct Capped<'a>(Vec<&'a RawValue>);

impl<'a> Capped<'a> {
    fn parse(body: &'a [u8], max_items: usize) -> Result<Capped<'a>, BodyError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed = serde::Deserializer::deserialize_seq(&mut de, CappedVisitor { max_items })
            .and_then(|items| de.end().map(|()| items));
        match parsed {
            Ok(items) => Ok(Capped(items)),
            Err(e) if e.to_string().starts_with(TOO_MANY) => {
                Err(BodyError::TooManyItems { limit: max_items })
            }
            Err(e) => Err(BodyError::NotArray(e.to_string())),
        }
    }
}

/// The message a capped array stops with (serde's errors carry text only).
const TOO_MANY: &str = "too many items";

struct CappedVisitor {
    max_items: usize,
}

impl<'de> serde::de::Visitor<'de> for CappedVisitor {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if out.len() == self.max_items {
                return Err(serde::de::Error::custom(TOO_MANY));
            }
            out.push(raw);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts<'a>(body: &'a [u8], items: &[Line]) -> Vec<&'a str> {
        items.iter().map(|l| std::str::from_utf8(&body[l.start..l.end]).unwrap()).collect()
    }

    #[test]
    fn ndjson_lines_keep_their_numbers() {
        let body = b"{\"a\":1}\n\n{\"b\":2}\r\n{\"c\":3}";
        let items = split(Framing::Ndjson, body, 100, 1000).unwrap();
        assert_eq!(texts(body, &items), ["{\"a\":1}", "", "{\"b\":2}\r", "{\"c\":3}"]);
        assert_eq!(items.iter().map(|l| l.position).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(split(Framing::Ndjson, b"", 100, 1000).unwrap().is_empty());
        assert_eq!(split(Framing::Ndjson, b"x\n", 100, 1000).unwrap().len(), 1);
    }

    #[test]
    fn a_body_of_more_items_than_the_cap_is_refused_before_they_are_kept() {
        let lines = b"\n\n\n";
        assert_eq!(split(Framing::Ndjson, lines, 100, 3).unwrap().len(), 3);
        assert_eq!(split(Framing::Ndjson, lines, 100, 2), Err(BodyError::TooManyItems { limit: 2 }));
        assert_eq!(split(Framing::Ndjson, b"a\nb", 100, 2).unwrap().len(), 2);
        assert_eq!(split(Framing::Ndjson, b"a\nb", 100, 1), Err(BodyError::TooManyItems { limit: 1 }));
        let array = b"[1, 2, 3]";
        assert_eq!(split(Framing::Json, array, 100, 3).unwrap().len(), 3);
        let refused = split(Framing::Json, array, 100, 2).unwrap_err();
        assert_eq!((refused.status(), refused), (413, BodyError::TooManyItems { limit: 2 }));
        assert!(matches!(split(Framing::Json, b"[1, 2", 100, 9), Err(BodyError::NotArray(_))));
    }

    #[test]
    fn arrays_and_single_objects() {
        let body = b" [ {\"a\": [1, 2]}, 5 ,\n{\"c\":\"]\"} ] ";
        let items = split(Framing::Json, body, 100, 1000).unwrap();
        assert_eq!(texts(body, &items), ["{\"a\": [1, 2]}", "5", "{\"c\":\"]\"}"]);
        let one = b"\n{\"a\":\n 1}\n";
        assert_eq!(texts(one, &split(Framing::Json, one, 100, 1000).unwrap()), ["{\"a\":\n 1}"]);
        let err = split(Framing::Json, b"[{\"a\":1},", 100, 1000).unwrap_err();
        assert!(matches!(err, BodyError::NotArray(_)) && err.status() == 400, "{err}");
        assert!(split(Framing::Json, b"\"x\"", 100, 1000).is_err());
    }

    #[test]
    fn oversize_items_are_marked_not_fatal() {
        let body = b"{\"a\":1}\n{\"long\":\"xxxxxxxxxxxxxxxx\"}\n";
        let items = split(Framing::Ndjson, body, 10, 1000).unwrap();
        assert_eq!(items[0].oversize, None);
        assert_eq!(items[1].oversize, Some(27));
    }

    #[test]
    fn framing_by_type_or_first_byte() {
        assert_eq!(framing_for(Some("application/x-ndjson"), b"[").unwrap(), Framing::Ndjson);
        assert_eq!(framing_for(Some("Application/JSON; charset=utf-8"), b"{").unwrap(), Framing::Json);
        assert_eq!(framing_for(None, b"  [{}]").unwrap(), Framing::Json);
        assert_eq!(framing_for(None, b"{}\n{}").unwrap(), Framing::Ndjson);
        assert_eq!(framing_for(Some("application/x-www-form-urlencoded"), b"[").unwrap(), Framing::Json);
        let err = framing_for(Some("text/csv"), b"").unwrap_err();
        assert_eq!(err.status(), 415);
    }

    #[test]
    fn decompression_is_capped() {
        use std::io::Write;
        let plain = vec![b'{'; 10_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decode_body(Some("gzip"), &gz, 10_000).unwrap().as_ref(), &plain[..]);
        assert_eq!(
            decode_body(Some("gzip"), &gz, 9_999).unwrap_err(),
            BodyError::TooLarge { limit: 9_999, decoded: true }
        );
        let zs = zstd::encode_all(&plain[..], 3).unwrap();
        assert_eq!(decode_body(Some("zstd"), &zs, 10_000).unwrap().len(), 10_000);
        assert!(matches!(decode_body(Some("gzip"), b"not gzip", 100), Err(BodyError::Corrupt { .. })));
        assert_eq!(decode_body(Some("br"), b"", 100).unwrap_err().status(), 415);
        assert_eq!(decode_body(None, b"abc", 2).unwrap_err().status(), 413);
        assert!(matches!(decode_body(Some("identity"), b"abc", 3), Ok(Cow::Borrowed(_))));
    }
}

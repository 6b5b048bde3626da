//! The decoder's fast path: one pass over the bytes of an ordinary event, no serde machinery.
//!
//! Nearly every event an emitter sends is a flat object of plain strings (no escapes), unsigned
//! integers and nulls. [`event`] decodes a valid one straight into an [`Event`]: keys compared with the
//! fields expected next (emitters write fields in one order), each value checked as it is read by the
//! one [`set_field`]; at anything else (an error to name, a duplicate, a missing field, an escape) it
//! gives up, and the line is decoded again by [`scan`] and validation, which name the reason.
//! [`scan`] sorts such an object into the same [`Slots`] the serde path builds, and
//! gives up (`None`) at the first thing it does not handle itself: an escape, a control character, a
//! key or value shaped in any way it does not know, malformed JSON of any kind. The caller then decodes
//! the whole text again by the serde path, so the fast path changes speed, never results: every
//! accepted text yields exactly the slots serde would, every error message still comes from serde and
//! from the one `validate`. Numbers other than plain unsigned integers, and the raw text of
//! `attributes` and unknown fields, are handed to serde_json itself on just their slice, so they parse
//! bit for bit as the serde path parses them. A differential test (`tests.rs`) holds the two paths
//! equal on valid, malformed and mutated lines.

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::swar;

use super::{ATTRIBUTES, Event, FIELD_COUNT, FIELDS, Scalar, Slots, merge_attributes, set_field};

/// Nesting the fast path follows inside `attributes` or an unknown field; deeper values go the serde
/// way (whose own recursion limit then applies to the whole line).
const MAX_DEPTH: usize = 32;

/// The index of a top-level field in [`FIELDS`], by its wire name.
pub(super) fn field_index(name: &str) -> Option<usize> {
    Some(match name {
        "event_id" => 0,
        "ts" => 1,
        "agent_id" => 2,
        "action" => 3,
        "resource" => 4,
        "scope" => 5,
        "outcome" => 6,
        "bytes_read" => 7,
        "bytes_written" => 8,
        "records" => 9,
        "session_id" => 10,
        "agent_role" => 11,
        "principal" => 12,
        "credential_id" => 13,
        "model" => 14,
        "model_provider" => 15,
        "input_tokens" => 16,
        "output_tokens" => 17,
        "cost_usd" => 18,
        "intent" => 19,
        "trace_id" => 20,
        "span_id" => 21,
        "source" => 22,
        "attributes" => ATTRIBUTES,
        _ => return None,
    })
}

/// The offset of the first `"`, `\\` or control character in `bytes`, eight bytes at a time.
fn string_end(bytes: &[u8]) -> Option<usize> {
    swar::find(
        bytes,
        |x| swar::equal(x, b'"') | swar::equal(x, b'\\') | swar::below(x, 0x20),
        |b| b == b'"' || b == b'\\' || b < 0x20,
    )
}

/// A cursor over the text; every method returns `None` to give up.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// Skips JSON whitespace (the four bytes RFC 8259 allows) and returns the next byte.
    fn next_token(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
        self.peek()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next_token()? == byte).then(|| self.at += 1)
    }

    /// A string with no escape and no control character, at `"`: its contents.
    fn plain_string(&mut self) -> Option<&'a str> {
        let bytes = self.text.as_bytes();
        let start = self.at + 1;
        let end = start + string_end(&bytes[start..])?;
        if bytes[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        // Both ends are ASCII quotes, so the slice lies on character boundaries.
        self.text.get(start..end)
    }

    /// After an object member: steps over the `,` before the next (`false`) or the `}` that closes the
    /// object (`true`); `None` at anything else.
    fn closes_object(&mut self) -> Option<bool> {
        let closes = match self.next_token()? {
            b',' => false,
            b'}' => true,
            _ => return None,
        };
        self.at += 1;
        Some(closes)
    }

    /// The text of a number token (its end found lexically; its grammar is serde's to check).
    fn number_token(&mut self) -> &'a str {
        let bytes = self.text.as_bytes();
        let start = self.at;
        let len = bytes[start..]
            .iter()
            .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .unwrap_or(bytes.len() - start);
        self.at = start + len;
        &self.text[start..start + len]
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        self.text[self.at..].starts_with(word).then(|| self.at += word.len())
    }

    /// Skips one value of any kind and returns its text: containers by their brackets, strings by their
    /// quotes (escapes stepped over, not checked: serde checks the slice afterwards).
    fn any_value(&mut self, depth: usize) -> Option<&'a str> {
        let start = self.at;
        match self.peek()? {
            b'"' => self.skip_string()?,
            b'{' | b'[' => {
                let bytes = self.text.as_bytes();
                let mut open = 0usize;
                loop {
                    match *bytes.get(self.at)? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => {
                            open += 1;
                            if depth + open > MAX_DEPTH {
                                return None;
                            }
                        }
                        b'}' | b']' => {
                            open -= 1;
                            if open == 0 {
                                self.at += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            b'-' | b'0'..=b'9' => {
                self.number_token();
            }
            b't' => self.literal("true")?,
            b'f' => self.literal("false")?,
            b'n' => self.literal("null")?,
            _ => return None,
        }
        Some(&self.text[start..self.at])
    }

    /// Steps over a string at `"`, escapes included.
    fn skip_string(&mut self) -> Option<()> {
        let bytes = self.text.as_bytes();
        let mut i = self.at + 1;
        loop {
            match *bytes.get(i)? {
                b'"' => break,
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
        self.at = i + 1;
        Some(())
    }

    /// One value of a contract field: a plain string borrowed, an unsigned integer, `null`, or a
    /// number serde reads from its own token.
    fn scalar(&mut self) -> Option<Scalar<'a>> {
        match self.peek()? {
            b'"' => self.plain_string().map(|s| Scalar::Str(Cow::Borrowed(s))),
            b'n' => self.literal("null").map(|()| Scalar::Null),
            b'0'..=b'9' | b'-' => {
                let token = self.number_token();
                let digits = token.as_bytes();
                let plain = digits.iter().all(u8::is_ascii_digit)
                    && (digits.len() == 1 || digits[0] != b'0')
                    && digits.len() < 20;
                if plain {
                    // At most 19 digits: fits in a u64.
                    Some(Scalar::U64(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))))
                } else {
                    serde_json::from_str::<Scalar<'a>>(token).ok()
                }
            }
            _ => None,
        }
    }
}

/// Sorts an ordinary event object into slots; `None` when the serde path must decide.
pub(super) fn scan(text: &str) -> Option<Slots<'_>> {
    let mut c = Cursor { text, at: 0 };
    c.expect(b'{')?;
    let mut slots = Slots::default();
    if c.next_token()? == b'}' {
        c.at += 1;
    } else {
        loop {
            if c.next_token()? != b'"' {
                return None;
            }
            let key = c.plain_string()?;
            c.expect(b':')?;
            c.next_token()?;
            match field_index(key) {
                Some(ATTRIBUTES) => {
                    let raw = raw_value(&mut c)?;
                    if slots.attributes.replace(raw).is_some() {
                        slots.duplicate.get_or_insert("attributes");
                    }
                }
                Some(i) => {
                    let v = c.scalar()?;
                    if slots.values[i].replace(v).is_some() {
                        slots.duplicate.get_or_insert(FIELDS[i].name);
                    }
                }
                None => {
                    let raw = raw_value(&mut c)?;
                    slots.extra.push((Cow::Borrowed(key), raw));
                }
            }
            if c.closes_object()? {
                break;
            }
        }
    }
    // Only whitespace may follow the object.
    (c.next_token().is_none()).then_some(slots)
}

/// An ordinary event decoded straight into an [`Event`], each value checked as it is read (by the same
/// [`set_field`] the other paths use); `None` for anything else, which [`scan`] and validation then decide
/// (and name the reason for). It accepts only what those accept, and gives the same event: no [`Slots`]
/// in between, and keys matched by their expected order rather than scanned and looked up.
pub(super) fn event(text: &str) -> Option<Event<'_>> {
    let mut c = Cursor { text, at: 0 };
    c.expect(b'{')?;
    let mut ev = Event::default();
    // Fields met (a second one is a duplicate) and fields given a value (not `null`), by index.
    let (mut met, mut valued) = (0u32, 0u32);
    let mut attributes = None;
    let mut extra = Vec::new();
    let mut next = 0;
    loop {
        if c.next_token()? != b'"' {
            return None;
        }
        let key = match c.expected_key(next) {
            Some(i) => Ok(i),
            None => {
                let key = c.plain_string()?;
                field_index(key).ok_or(key)
            }
        };
        c.expect(b':')?;
        c.next_token()?;
        match key {
            Ok(i) => {
                let bit = 1u32 << i;
                if met & bit != 0 {
                    return None;
                }
                met |= bit;
                next = i + 1;
                if i == ATTRIBUTES {
                    attributes = Some(raw_value(&mut c)?);
                } else {
                    match c.scalar()? {
                        Scalar::Null => {}
                        v => {
                            set_field(&mut ev, i, v).ok()?;
                            valued |= bit;
                        }
                    }
                }
            }
            Err(key) => extra.push((Cow::Borrowed(key), raw_value(&mut c)?)),
        }
        if c.closes_object()? {
            break;
        }
    }
    if c.next_token().is_some() || valued & REQUIRED != REQUIRED {
        return None;
    }
    ev.attributes = merge_attributes(attributes, &extra).ok()?;
    Some(ev)
}

/// The bits of the required fields, by index in [`FIELDS`].
const REQUIRED: u32 = {
    let mut bits = 0;
    let mut i = 0;
    while i < FIELD_COUNT {
        if FIELDS[i].required {
            bits |= 1 << i;
        }
        i += 1;
    }
    bits
};

/// A field's name in quotes, as the first 16 bytes of text at a key would hold it: two little-endian
/// words, the mask of the bytes that count, and its length.
#[derive(Clone, Copy)]
struct QuotedName {
    words: [u64; 2],
    masks: [u64; 2],
    len: usize,
}

const fn quoted(name: &str) -> QuotedName {
    let name = name.as_bytes();
    assert!(name.len() + 2 <= 16, "a field name of up to 14 bytes");
    let (mut bytes, mut mask) = ([0u8; 16], [0u8; 16]);
    bytes[0] = b'"';
    bytes[name.len() + 1] = b'"';
    let mut i = 0;
    while i < name.len() + 2 {
        if i > 0 && i <= name.len() {
            bytes[i] = name[i - 1];
        }
        mask[i] = 0xff;
        i += 1;
    }
    QuotedName {
        words: [word(&bytes, 0), word(&bytes, 8)],
        masks: [word(&mask, 0), word(&mask, 8)],
        len: name.len() + 2,
    }
}

const fn word(bytes: &[u8; 16], at: usize) -> u64 {
    let mut w = 0u64;
    let mut i = 0;
    while i < 8 {
        w |= (bytes[at + i] as u64) << (8 * i);
        i += 1;
    }
    w
}

/// Every field's quoted name, by index in [`FIELDS`] (`attributes` last).
const QUOTED: [QuotedName; FIELD_COUNT + 1] = {
    let mut names = [QuotedName { words: [0; 2], masks: [0; 2], len: 0 }; FIELD_COUNT + 1];
    let mut i = 0;
    while i <= FIELD_COUNT {
        names[i] = quoted(FIELDS[i].name);
        i += 1;
    }
    names
};

/// How many fields, from the one expected next, a key is compared with before it is read the long way:
/// emitters write fields in one order, leaving out the optional ones they do not have.
const LOOKAHEAD: usize = 4;

impl Cursor<'_> {
    /// At `"`: the index of the key here if it is one of the `LOOKAHEAD` fields from `from` on in the
    /// table's order, stepping over it (quotes included); `None` (nothing consumed) otherwise.
    fn expected_key(&mut self, from: usize) -> Option<usize> {
        let bytes = self.text.as_bytes().get(self.at..self.at + 16)?;
        let (lo, hi) = bytes.split_at(8);
        let words = [u64::from_le_bytes(lo.try_into().ok()?), u64::from_le_bytes(hi.try_into().ok()?)];
        let to = (from + LOOKAHEAD).min(QUOTED.len());
        let i = (from..to).find(|&i| {
            let q = &QUOTED[i];
            words[0] & q.masks[0] == q.words[0] && words[1] & q.masks[1] == q.words[1]
        })?;
        self.at += QUOTED[i].len;
        Some(i)
    }
}

/// The raw text of one value, checked by serde_json on its own slice.
fn raw_value<'a>(c: &mut Cursor<'a>) -> Option<&'a RawValue> {
    let text = c.any_value(1)?;
    serde_json::from_str::<&'a RawValue>(text).ok()
}

#[cfg(test)]
mod tests {
    use super::string_end;

    fn byte_by_byte(bytes: &[u8]) -> Option<usize> {
        bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)
    }

    #[test]
    fn the_end_of_a_string_is_found_eight_bytes_at_a_time_as_one_at_a_time() {
        // Every byte value at every offset of strings up to three words long, after ordinary bytes (ASCII
        // and the high bytes of UTF-8 text, which sit next to the tested ranges) and before anything.
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let ordinary = [b'a', b'!', b'#', b'[', b']', b'~', 0x7f, 0x80, 0xc3, 0xa9, 0xff, b' '];
        for len in 0..=24 {
            for at in 0..len {
                for v in 0..=255u8 {
                    let mut s: Vec<u8> =
                        (0..len).map(|_| ordinary[next() as usize % ordinary.len()]).collect();
                    s[at] = v;
                    for b in &mut s[at + 1..] {
                        *b = next() as u8;
                    }
                    assert_eq!(string_end(&s), byte_by_byte(&s), "{s:?}");
                }
            }
            let plain: Vec<u8> = (0..len).map(|_| ordinary[next() as usize % ordinary.len()]).collect();
            assert_eq!(string_end(&plain), None);
        }
    }
}

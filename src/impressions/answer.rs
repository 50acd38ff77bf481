//! Flagr's evaluation answers, read in place: strings borrowed from the answer's bytes (copied
//! only when they carry escapes), the flag's tags and the entity's context kept as raw JSON.
//!
//! In: the bytes of a `POST /evaluation` or `/evaluation/batch` answer. Out: [`EvalResult`]s.
//! Never: builds a `serde_json::Value` of the answer, or reads as valid what serde_json would
//! refuse (the derived `Deserialize` is the reference the reader is checked against).
//!
//! A reader of its own rather than serde_json's: the answer's shape is fixed, and matching each
//! key once against the few this needs, skipping the rest with one scan per string, takes
//! about half of serde_json's time per answer, the largest part of an impression's cost. An
//! object laid out as Flagr lays it out (keys sorted and plain, no whitespace) is first tried
//! with each key expected in turn, about 30 % cheaper again; anything else falls back to the
//! general reading of that object.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::scan::next_escape;

/// One result; a batch answer is a result whose `evaluationResults` holds the others.
#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(default)]
pub(super) struct EvalResult<'a> {
    #[serde(rename = "evaluationResults", borrow)]
    pub(super) results: Option<Vec<EvalResult<'a>>>,
    #[serde(rename = "evalContext", borrow)]
    pub(super) context: Option<EvalContext<'a>>,
    #[serde(rename = "evalDebugLog", borrow)]
    pub(super) debug: Option<DebugLog<'a>>,
    #[serde(rename = "flagID")]
    pub(super) flag_id: Option<i64>,
    #[serde(rename = "flagKey", borrow)]
    pub(super) flag_key: Option<Text<'a>>,
    #[serde(rename = "flagSnapshotID")]
    pub(super) snapshot: Option<i64>,
    #[serde(rename = "segmentID")]
    pub(super) segment: Option<i64>,
    #[serde(rename = "variantID")]
    pub(super) variant: Option<i64>,
    #[serde(rename = "variantKey", borrow)]
    pub(super) variant_key: Option<Text<'a>>,
    #[serde(rename = "flagTags", borrow)]
    pub(super) tags: Option<Raw<'a>>,
    #[serde(rename = "dataRecordsEnabled")]
    pub(super) data_records_enabled: Option<bool>,
}

#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(default)]
pub(super) struct EvalContext<'a> {
    #[serde(rename = "entityID", borrow)]
    pub(super) entity_id: Option<Text<'a>>,
    #[serde(rename = "entityType", borrow)]
    pub(super) entity_type: Option<Text<'a>>,
    /// Raw: Flagr echoes whatever the client sent (`[]` from some clients), and one odd
    /// context must not make the whole answer unreadable.
    #[serde(rename = "entityContext", borrow)]
    pub(super) entity_context: Option<Raw<'a>>,
}

#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(default)]
pub(super) struct DebugLog<'a> {
    #[serde(borrow)]
    pub(super) msg: Option<Text<'a>>,
}

/// An entity context's keys, sorted (as records have always shown them); empty when it is not
/// a JSON object.
pub(super) fn context_map<'a>(raw: Option<Raw<'a>>) -> BTreeMap<Text<'a>, &'a RawValue> {
    raw.and_then(|r| serde_json::from_str(r.0).ok())
        .unwrap_or_default()
}

/// `raw` (one JSON value, already read) is an object serde_json writes back byte for byte as
/// [`context_map`] and the record writer have it: every key written plainly, in increasing
/// order (so none twice), none of Flagr's `@` keys, nothing between its members. Go writes a
/// map's keys sorted, so a context as Flagr echoes it usually is.
pub(super) fn writes_back_unchanged(raw: &str) -> bool {
    let mut r = Reader {
        s: raw,
        b: raw.as_bytes(),
        i: 0,
    };
    if r.eat(b'{').is_none() {
        return false;
    }
    if r.eat(b'}').is_some() {
        return r.i == raw.len();
    }
    let mut last: Option<&[u8]> = None;
    loop {
        if r.b.get(r.i) != Some(&b'"') {
            return false;
        }
        let Some(end) = r.plain_end() else {
            return false;
        };
        let key = &r.b[r.i + 1..end];
        if key.first() == Some(&b'@') || last.is_some_and(|l| key <= l) {
            return false;
        }
        last = Some(key);
        r.i = end + 1;
        if r.eat(b':').is_none() || r.b.get(r.i).is_some_and(|b| b.is_ascii_whitespace()) {
            return false;
        }
        if r.skip(0).is_err() {
            return false;
        }
        match r.b.get(r.i) {
            Some(b',') => r.i += 1,
            Some(b'}') => return r.i + 1 == raw.len(),
            _ => return false,
        }
    }
}

/// The answer's results: the batch's, or the single one.
pub(super) fn parse(raw: &[u8]) -> Result<Vec<EvalResult<'_>>, serde_json::Error> {
    // UTF-8 checked once for the whole answer: every string then splits at ASCII bytes.
    let text = std::str::from_utf8(raw).map_err(serde::de::Error::custom)?;
    let mut r = Reader {
        s: text,
        b: raw,
        i: 0,
    };
    let top = r.result(0)?;
    r.ws();
    if r.i != raw.len() {
        return Err(r.err("trailing characters"));
    }
    Ok(top.unbatch())
}

/// serde_json's reading of the same answer: the reference [`parse`] is checked against.
#[cfg(any(test, fuzzing))]
pub(super) fn parse_serde(raw: &[u8]) -> Result<Vec<EvalResult<'_>>, serde_json::Error> {
    let text = std::str::from_utf8(raw).map_err(serde::de::Error::custom)?;
    serde_json::from_str(text).map(EvalResult::unbatch)
}

impl<'a> EvalResult<'a> {
    /// A batch's results, or the single one.
    fn unbatch(mut self) -> Vec<EvalResult<'a>> {
        match self.results.take() {
            Some(v) => v,
            None => vec![self],
        }
    }
}

/// JSON text, checked to be one whole value, borrowed from the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Raw<'a>(pub(super) &'a str);

impl<'a> Raw<'a> {
    pub(super) fn get(self) -> &'a str {
        self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(|r| Raw(r.get()))
    }
}

/// Nesting deeper than this is refused: below serde_json's own limit (128), so nothing read
/// here is something serde_json would refuse for its depth.
const MAX_DEPTH: u32 = 100;

/// A cursor over the answer. Every method leaves `i` after what it read.
struct Reader<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

type Error = serde_json::Error;

impl<'a> Reader<'a> {
    fn err(&self, what: &str) -> Error {
        serde::de::Error::custom(format_args!("{what} at byte {}", self.i))
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn word(&mut self, w: &[u8]) -> Result<(), Error> {
        if self.b[self.i..].starts_with(w) {
            self.i += w.len();
            Ok(())
        } else {
            Err(self.err("expected a literal"))
        }
    }

    /// `null` as `None`, anything else through `f`.
    fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, Error>,
    ) -> Result<Option<T>, Error> {
        if self.peek() == Some(b'n') {
            self.word(b"null")?;
            return Ok(None);
        }
        f(self).map(Some)
    }

    /// A field's value (`null` as `None`), marked `bit` in `seen` first: a key twice in one
    /// object is an error, as serde's derive has it.
    fn field<T>(
        &mut self,
        seen: &mut u16,
        bit: u16,
        read: impl FnOnce(&mut Self) -> Result<T, Error>,
    ) -> Result<Option<T>, Error> {
        if *seen & bit != 0 {
            return Err(self.err("duplicate field"));
        }
        *seen |= bit;
        self.opt(read)
    }

    /// One level further in, or an error past [`MAX_DEPTH`].
    fn deeper(&self, depth: u32) -> Result<u32, Error> {
        if depth >= MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        Ok(depth + 1)
    }

    /// An object, each key handed to `field` with the cursor at its value.
    fn object(
        &mut self,
        field: impl FnMut(&mut Self, &[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.members(true, field)
    }

    /// An object's members; with `decode` false its keys are passed over as serde_json passes
    /// over the keys of what it ignores (a lone surrogate in one is no error) and `field` gets
    /// an empty key.
    fn members(
        &mut self,
        decode: bool,
        mut field: impl FnMut(&mut Self, &[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.peek() != Some(b'{') {
            return Err(self.err("expected an object"));
        }
        self.i += 1;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a key"));
            }
            let key = if decode {
                self.key()?
            } else {
                self.skip_string()?;
                Cow::Borrowed(&b""[..])
            };
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':'"));
            }
            self.i += 1;
            field(self, &key)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    /// An array, each element read by `item`.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Result<(), Error>) -> Result<(), Error> {
        if self.peek() != Some(b'[') {
            return Err(self.err("expected an array"));
        }
        self.i += 1;
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    /// A string's content: borrowed when it has no escapes.
    #[inline]
    fn string(&mut self) -> Result<Cow<'a, str>, Error> {
        if self.peek() != Some(b'"') {
            return Err(self.err("expected a string"));
        }
        let start = self.i + 1;
        // Both ends are ASCII bytes, so this is a whole part of valid UTF-8.
        if let Some(s) = self.plain_end().and_then(|end| self.s.get(start..end)) {
            self.i = start + s.len() + 1;
            return Ok(Cow::Borrowed(s));
        }
        self.escaped(start).map(Cow::Owned)
    }

    /// A key's bytes (the cursor on its opening quote), matched as bytes: borrowed when it has
    /// no escapes. Not through [`Self::string`]: its second look for whitespace and its check
    /// that a `str` splits at character boundaries made reading an answer 12 % dearer.
    #[inline]
    fn key(&mut self) -> Result<Cow<'a, [u8]>, Error> {
        let start = self.i + 1;
        if let Some(k) = self.plain_end().and_then(|end| self.b.get(start..end)) {
            self.i = start + k.len() + 1;
            return Ok(Cow::Borrowed(k));
        }
        self.escaped(start).map(|k| Cow::Owned(k.into_bytes()))
    }

    /// Where the string at the cursor ends when it has nothing to decode.
    #[inline]
    fn plain_end(&self) -> Option<usize> {
        let end = next_escape(self.b, self.i + 1);
        (self.b.get(end) == Some(&b'"')).then_some(end)
    }

    /// A string whose content starts at `start` and holds something to decode, decoded whole.
    #[cold]
    #[inline(never)]
    fn escaped(&mut self, start: usize) -> Result<String, Error> {
        self.i = start;
        let mut out = String::new();
        self.unescape(&mut out)?;
        Ok(out)
    }

    /// The rest of a string with escapes, from the cursor, decoded as serde_json decodes it.
    fn unescape(&mut self, out: &mut String) -> Result<(), Error> {
        loop {
            match self.b.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    let c = match self.b.get(self.i + 1) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.i += 2;
                            out.push(self.unicode()?);
                            continue;
                        }
                        _ => return Err(self.err("invalid escape")),
                    };
                    self.i += 2;
                    out.push(c);
                }
                Some(&b) if b < 0x20 => return Err(self.err("control character in a string")),
                Some(_) => {
                    let end = next_escape(self.b, self.i);
                    out.push_str(self.s.get(self.i..end).unwrap_or_default());
                    self.i = end;
                }
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    /// Four hex digits after `\u`.
    fn hex4(&mut self) -> Result<u32, Error> {
        let digits = self
            .b
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("short \\u escape"))?;
        let mut v = 0;
        for &d in digits {
            let n = char::from(d)
                .to_digit(16)
                .ok_or_else(|| self.err("invalid \\u escape"))?;
            v = v * 16 + n;
        }
        self.i += 4;
        Ok(v)
    }

    /// The character of a `\u` escape (the cursor after the `u`), a surrogate pair joined;
    /// a lone surrogate is an error, as serde_json has it for strings.
    fn unicode(&mut self) -> Result<char, Error> {
        let hi = self.hex4()?;
        let code = match hi {
            0xD800..=0xDBFF => {
                if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                    return Err(self.err("lone leading surrogate"));
                }
                self.i += 2;
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err(self.err("lone leading surrogate"));
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.err("lone trailing surrogate")),
            c => c,
        };
        char::from_u32(code).ok_or_else(|| self.err("invalid \\u escape"))
    }

    /// Any value, checked and passed over.
    fn skip(&mut self, depth: u32) -> Result<(), Error> {
        match self.peek() {
            Some(b'"') => self.skip_string(),
            Some(b'{') => {
                let depth = self.deeper(depth)?;
                self.members(false, |r, _| r.skip(depth))
            }
            Some(b'[') => {
                let depth = self.deeper(depth)?;
                self.array(|r| r.skip(depth))
            }
            Some(b't') => self.word(b"true"),
            Some(b'f') => self.word(b"false"),
            Some(b'n') => self.word(b"null"),
            Some(b'-' | b'0'..=b'9') => self.skip_number(),
            _ => Err(self.err("expected a value")),
        }
    }

    /// A string passed over: escapes checked as serde_json checks them in what it ignores
    /// (a `\u` needs four hex digits, nothing more).
    fn skip_string(&mut self) -> Result<(), Error> {
        self.i += 1;
        loop {
            self.i = next_escape(self.b, self.i);
            match self.b.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    match self.b.get(self.i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                        Some(b'u') => {
                            self.i += 2;
                            self.hex4()?;
                        }
                        _ => return Err(self.err("invalid escape")),
                    };
                }
                Some(_) => return Err(self.err("control character in a string")),
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    /// A number passed over, by JSON's grammar.
    fn skip_number(&mut self) -> Result<(), Error> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        Ok(())
    }

    /// An integer as serde_json reads one into an `i64`: no fraction or exponent, no `-0`
    /// (serde_json reads that as a float), nothing out of range.
    fn int(&mut self) -> Result<i64, Error> {
        self.ws();
        let negative = self.b.get(self.i) == Some(&b'-');
        if negative {
            self.i += 1;
        }
        let mut v: u64 = 0;
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                while let Some(&d) = self.b.get(self.i).filter(|d| d.is_ascii_digit()) {
                    v = v
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(d - b'0')))
                        .ok_or_else(|| self.err("integer out of range"))?;
                    self.i += 1;
                }
            }
            _ => return Err(self.err("expected an integer")),
        }
        if let Some(b'.' | b'e' | b'E' | b'0'..=b'9') = self.b.get(self.i) {
            return Err(self.err("expected an integer"));
        }
        if negative {
            // -2^63 is the one magnitude past i64::MAX that fits.
            match v {
                0 => Err(self.err("expected an integer")),
                v if v <= 1 << 63 => Ok(0i64.wrapping_sub_unsigned(v)),
                _ => Err(self.err("integer out of range")),
            }
        } else {
            i64::try_from(v).map_err(|_| self.err("integer out of range"))
        }
    }

    fn boolean(&mut self) -> Result<bool, Error> {
        match self.peek() {
            Some(b't') => self.word(b"true").map(|_| true),
            Some(b'f') => self.word(b"false").map(|_| false),
            _ => Err(self.err("expected a boolean")),
        }
    }

    fn text(&mut self) -> Result<Text<'a>, Error> {
        self.string().map(Text)
    }

    /// Any value, as its text.
    fn raw(&mut self, depth: u32) -> Result<Raw<'a>, Error> {
        self.ws();
        let start = self.i;
        self.skip(depth)?;
        let text = self
            .s
            .get(start..self.i)
            .ok_or_else(|| self.err("not UTF-8"))?;
        Ok(Raw(text))
    }

    fn result(&mut self, depth: u32) -> Result<EvalResult<'a>, Error> {
        let depth = self.deeper(depth)?;
        if let Some(r) = self.quickly(|p| p.flagr_result(depth)) {
            return Ok(r);
        }
        let mut r = EvalResult::default();
        let mut seen = 0u16;
        self.object(|p, key| {
            match key {
                b"evaluationResults" => {
                    r.results = p.field(&mut seen, 1, |p| {
                        let inner = p.deeper(depth)?;
                        let mut v = Vec::new();
                        p.array(|p| p.result(inner).map(|x| v.push(x)))?;
                        Ok(v)
                    })?;
                }
                b"evalContext" => r.context = p.field(&mut seen, 1 << 1, |p| p.context(depth))?,
                b"evalDebugLog" => r.debug = p.field(&mut seen, 1 << 2, |p| p.debug(depth))?,
                b"flagID" => r.flag_id = p.field(&mut seen, 1 << 3, Self::int)?,
                b"flagKey" => r.flag_key = p.field(&mut seen, 1 << 4, Self::text)?,
                b"flagSnapshotID" => r.snapshot = p.field(&mut seen, 1 << 5, Self::int)?,
                b"segmentID" => r.segment = p.field(&mut seen, 1 << 6, Self::int)?,
                b"variantID" => r.variant = p.field(&mut seen, 1 << 7, Self::int)?,
                b"variantKey" => r.variant_key = p.field(&mut seen, 1 << 8, Self::text)?,
                b"flagTags" => r.tags = p.field(&mut seen, 1 << 9, |p| p.raw(depth))?,
                b"dataRecordsEnabled" => {
                    r.data_records_enabled = p.field(&mut seen, 1 << 10, Self::boolean)?
                }
                _ => p.skip(depth)?,
            }
            Ok(())
        })?;
        Ok(r)
    }

    fn context(&mut self, depth: u32) -> Result<EvalContext<'a>, Error> {
        let depth = self.deeper(depth)?;
        if let Some(c) = self.quickly(|p| p.flagr_context(depth)) {
            return Ok(c);
        }
        let mut c = EvalContext::default();
        let mut seen = 0u16;
        self.object(|p, key| {
            match key {
                b"entityID" => c.entity_id = p.field(&mut seen, 1, Self::text)?,
                b"entityType" => c.entity_type = p.field(&mut seen, 1 << 1, Self::text)?,
                b"entityContext" => {
                    c.entity_context = p.field(&mut seen, 1 << 2, |p| p.raw(depth))?
                }
                _ => p.skip(depth)?,
            }
            Ok(())
        })?;
        Ok(c)
    }

    fn debug(&mut self, depth: u32) -> Result<DebugLog<'a>, Error> {
        let depth = self.deeper(depth)?;
        if let Some(d) = self.quickly(|p| p.flagr_debug(depth)) {
            return Ok(d);
        }
        let mut d = DebugLog::default();
        let mut seen = 0u16;
        self.object(|p, key| {
            if key == b"msg" {
                d.msg = p.field(&mut seen, 1, Self::text)?;
            } else {
                p.skip(depth)?;
            }
            Ok(())
        })?;
        Ok(d)
    }
}

/// A key as it comes before its value, `"key":`, held as the two eight-byte words at its ends
/// (they overlap when it is shorter than sixteen bytes; one shorter than eight is masked):
/// matching one is two comparisons, and a whole comparison only for a longer key.
#[derive(Clone, Copy)]
struct Key {
    pattern: [u8; 40],
    len: usize,
    mask: u64,
    head: u64,
    tail: u64,
}

impl Key {
    const fn new(name: &[u8]) -> Self {
        let len = name.len() + 3;
        assert!(len <= 40);
        let mut p = [0u8; 40];
        p[0] = b'"';
        let mut i = 0;
        while i < name.len() {
            p[i + 1] = name[i];
            i += 1;
        }
        p[len - 2] = b'"';
        p[len - 1] = b':';
        let last = len.saturating_sub(8);
        let (mut head, mut tail) = ([0u8; 8], [0u8; 8]);
        let mut j = 0;
        while j < 8 {
            head[j] = p[j];
            tail[j] = p[last + j];
            j += 1;
        }
        Self {
            pattern: p,
            len,
            mask: if len < 8 {
                (1 << (8 * len)) - 1
            } else {
                u64::MAX
            },
            head: u64::from_le_bytes(head),
            tail: u64::from_le_bytes(tail),
        }
    }

    /// `rest` starts with this key (and holds at least eight bytes).
    #[inline]
    fn starts(&self, rest: &[u8]) -> bool {
        let word = |at: usize| {
            rest.get(at..at + 8)
                .and_then(|w| <[u8; 8]>::try_from(w).ok())
                .map(|w| u64::from_le_bytes(w) & self.mask)
        };
        word(0) == Some(self.head)
            && word(self.len.saturating_sub(8)) == Some(self.tail)
            && (self.len <= 16 || rest.get(8..self.len) == self.pattern.get(8..self.len))
    }
}

/// A result's keys as Flagr writes them: go-swagger's models list their fields sorted, and Go
/// writes them in that order, leaving out those that are empty.
const RESULT_KEYS: [Key; 13] = [
    Key::new(b"dataRecordsEnabled"),
    Key::new(b"evalContext"),
    Key::new(b"evalDebugLog"),
    Key::new(b"flagID"),
    Key::new(b"flagKey"),
    Key::new(b"flagSnapshotID"),
    Key::new(b"flagTags"),
    Key::new(b"recordSource"),
    Key::new(b"segmentID"),
    Key::new(b"timestamp"),
    Key::new(b"variantAttachment"),
    Key::new(b"variantID"),
    Key::new(b"variantKey"),
];
const CONTEXT_KEYS: [Key; 8] = [
    Key::new(b"enableDebug"),
    Key::new(b"entityContext"),
    Key::new(b"entityID"),
    Key::new(b"entityType"),
    Key::new(b"flagID"),
    Key::new(b"flagKey"),
    Key::new(b"flagTags"),
    Key::new(b"flagTagsOperator"),
];
const DEBUG_KEYS: [Key; 2] = [Key::new(b"msg"), Key::new(b"segmentDebugLogs")];

/// The way through an answer laid out as Flagr lays it out: no whitespace between members,
/// each key written plainly and known, keys in increasing order (so none comes twice). Each
/// value is read by the general reader's own functions. `None` at the first thing that is not
/// so, and the object is read again by the general reader, which decides what it is: nothing
/// read here differs from what it reads, only the matching of keys and punctuation is quicker.
impl<'a> Reader<'a> {
    /// The value at the cursor read the quick way, or `None` with the cursor where it was, for
    /// the general reader to read it again.
    #[inline]
    fn quickly<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        self.ws();
        let start = self.i;
        let got = read(self);
        if got.is_none() {
            self.i = start;
        }
        got
    }

    /// The byte at the cursor is `c`; the cursor moves past it.
    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    /// `"key":` at the cursor for a key of `keys` at `from` or later: its index, the cursor at
    /// its value.
    #[inline]
    fn known_key(&mut self, keys: &[Key], from: usize) -> Option<usize> {
        let rest = self.b.get(self.i..)?;
        let k = (from..keys.len()).find(|&k| keys[k].starts(rest))?;
        self.i += keys[k].len;
        Some(k)
    }

    /// An object whose keys are all in `keys`, in its order; `value` reads the value of key `k`.
    #[inline]
    fn known_object(
        &mut self,
        keys: &[Key],
        mut value: impl FnMut(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        let mut next = 0;
        loop {
            let k = self.known_key(keys, next)?;
            next = k + 1;
            value(self, k)?;
            if self.eat(b',').is_none() {
                return self.eat(b'}');
            }
        }
    }

    /// A field's value read by the general reader (`null` as `None`).
    #[inline]
    fn known<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T, Error>) -> Option<Option<T>> {
        self.opt(read).ok()
    }

    fn flagr_result(&mut self, depth: u32) -> Option<EvalResult<'a>> {
        let mut r = EvalResult::default();
        self.known_object(&RESULT_KEYS, |p, k| {
            match k {
                0 => r.data_records_enabled = p.known(Self::boolean)?,
                1 => r.context = p.known(|p| p.context(depth))?,
                2 => r.debug = p.known(|p| p.debug(depth))?,
                3 => r.flag_id = p.known(Self::int)?,
                4 => r.flag_key = p.known(Self::text)?,
                5 => r.snapshot = p.known(Self::int)?,
                6 => r.tags = p.known(|p| p.raw(depth))?,
                8 => r.segment = p.known(Self::int)?,
                11 => r.variant = p.known(Self::int)?,
                12 => r.variant_key = p.known(Self::text)?,
                _ => p.skip(depth).ok()?,
            }
            Some(())
        })?;
        Some(r)
    }

    fn flagr_context(&mut self, depth: u32) -> Option<EvalContext<'a>> {
        let mut c = EvalContext::default();
        self.known_object(&CONTEXT_KEYS, |p, k| {
            match k {
                1 => c.entity_context = p.known(|p| p.raw(depth))?,
                2 => c.entity_id = p.known(Self::text)?,
                3 => c.entity_type = p.known(Self::text)?,
                _ => p.skip(depth).ok()?,
            }
            Some(())
        })?;
        Some(c)
    }

    fn flagr_debug(&mut self, depth: u32) -> Option<DebugLog<'a>> {
        let mut d = DebugLog::default();
        self.known_object(&DEBUG_KEYS, |p, k| {
            match k {
                0 => d.msg = p.known(Self::text)?,
                _ => p.skip(depth).ok()?,
            }
            Some(())
        })?;
        Some(d)
    }
}

/// A string borrowed from the answer's bytes, or owned when it carried escapes.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Text<'a>(pub(super) Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Fuzzing: whatever this reader reads, serde_json reads the same.
#[cfg(fuzzing)]
pub fn check_against_serde(raw: &[u8]) {
    if let Ok(mine) = parse(raw) {
        let theirs = parse_serde(raw).expect("read here, refused by serde_json");
        assert_eq!(mine, theirs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_borrowed_unless_escaped_and_batches_unwrap() {
        let raw = br#"{"evaluationResults": [
            {"flagKey": "plain", "evalContext": {"entityID": "a\"b", "entityContext": {"z": 1, "a": [2]}}},
            {"flagKey": "two", "flagTags": null, "evalDebugLog": {"segmentDebugLogs": [{"msg": "x"}]}}
        ]}"#;
        let v = parse(raw).unwrap();
        assert_eq!(v.len(), 2);
        assert!(matches!(
            v[0].flag_key.as_ref().unwrap().0,
            Cow::Borrowed("plain")
        ));
        let ctx = v[0].context.as_ref().unwrap();
        assert!(matches!(ctx.entity_id.as_ref().unwrap().0, Cow::Owned(ref s) if s == "a\"b"));
        let map = context_map(ctx.entity_context);
        let keys: Vec<&str> = map.keys().map(|k| &**k).collect();
        assert_eq!(keys, ["a", "z"]);
        // Whatever else a client sent as its context: no keys, and the answer still reads.
        let odd = parse(br#"{"evalContext": {"entityID": "x", "entityContext": []}, "flagID": 1}"#)
            .unwrap();
        assert!(context_map(odd[0].context.as_ref().unwrap().entity_context).is_empty());
        assert!(v[1].tags.is_none() && v[1].debug.as_ref().unwrap().msg.is_none());
        let single = parse(br#"{"flagID": 3, "variantKey": "on"}"#).unwrap();
        assert_eq!((single.len(), single[0].flag_id), (1, Some(3)));
        assert!(parse(b"[1, 2]").is_err());
        assert!(parse(b"{\"flagKey\": \"\xff\"}").is_err(), "not UTF-8");
        assert!(parse(br#"{"evaluationResults": 5}"#).is_err());
    }

    /// A batch answer as Flagr 1.2.3 writes it, with what else an answer may hold.
    const ANSWER: &str = r#"{"evaluationResults":[{"evalContext":{"entityContext":{"age":30,"state":"CA"},"entityID":"user-1","entityType":"user","flagKey":"flag-0"},"evalDebugLog":{"segmentDebugLogs":null},"flagID":1,"flagKey":"flag-0","flagSnapshotID":2,"recordSource":"evaluation","segmentID":1,"timestamp":"2026-12-03T12:25:12Z","variantAttachment":null,"variantID":1,"variantKey":"on"},
        {"evalContext":{"entityContext":{"k\u00e9y":"v\"al\\ue","@ts":1.5e3,"n":[-0.25,{"x":[true,false,null]}]},"entityID":"\ud83d\ude00 caf\u00e9 \/ \b\f\n\r\t","entityType":"us\u0065r","flagID":2},"evalDebugLog":{"msg":"matched \"s\"","segmentDebugLogs":[{"msg":"x","segmentID":3}]},"flagID":-9223372036854775808,"flagKey":"caf\u00e9","flagSnapshotID":9223372036854775807,"segmentID":0,"variantAttachment":{"a":[1,2,{"b":"\u0000"}]},"variantID":null,"variantKey":null,"flagTags":[{"id":1,"value":"t\"ag"}],"dataRecordsEnabled":true},
        { "flagID" : 3 , "dataRecordsEnabled" : false , "evalContext" : null , "evalDebugLog" : null , "flagTags" : null } ,
        {"fl\u0061gID":4,"unknown":{"deep":[[[[[[1]]]]]],"e":1E+2,"f":0.5e-1,"g":-0,"h":"\uDBFF\uDFFF"}}
    ]} "#;

    #[test]
    fn the_reader_reads_what_serde_json_reads() {
        let mine = parse(ANSWER.as_bytes()).unwrap();
        assert_eq!(mine, parse_serde(ANSWER.as_bytes()).unwrap());
        assert_eq!(mine.len(), 4);
        let ctx = mine[1].context.as_ref().unwrap();
        assert_eq!(
            &**ctx.entity_id.as_ref().unwrap(),
            "\u{1F600} café / \u{8}\u{c}\n\r\t"
        );
        assert_eq!(&**ctx.entity_type.as_ref().unwrap(), "user");
        assert_eq!(mine[1].flag_id, Some(i64::MIN));
        assert_eq!(mine[1].tags.unwrap().get(), r#"[{"id":1,"value":"t\"ag"}]"#);
        assert_eq!(
            mine[3].flag_id,
            Some(4),
            "a key written with escapes is the same key"
        );
        // A single evaluation's answer, and whitespace all around.
        let single = " {\n\t\"flagID\" :7 ,\"variantKey\":\"on\"}\r\n";
        assert_eq!(
            parse(single.as_bytes()).unwrap(),
            parse_serde(single.as_bytes()).unwrap()
        );
    }

    #[test]
    fn what_serde_json_refuses_the_reader_refuses() {
        let refused = [
            r#"{"flagID": 1.0}"#,
            r#"{"flagID": 1e2}"#,
            r#"{"flagID": -0}"#,
            r#"{"flagID": 01}"#,
            r#"{"flagID": 9223372036854775808}"#,
            r#"{"flagID": -9223372036854775809}"#,
            r#"{"flagID": 99999999999999999999999}"#,
            r#"{"flagID": "1"}"#,
            r#"{"flagKey": 1}"#,
            r#"{"flagKey": "a\x"}"#,
            r#"{"flagKey": "\ud800"}"#,
            r#"{"flagKey": "\udc00"}"#,
            r#"{"flagKey": "\ud800\u0041"}"#,
            r#"{"flagKey": "\u12G4"}"#,
            "{\"flagKey\": \"tab\tin\"}",
            r#"{"flagKey": "open}"#,
            r#"{"dataRecordsEnabled": 1}"#,
            r#"{"flagID": 1, "flagID": 2}"#,
            r#"{"evalContext": {"entityID": "a", "entityID": "b"}}"#,
            r#"{"flagID": 1,}"#,
            r#"{"flagID" 1}"#,
            r#"{"flagID": 1} x"#,
            r#"{"other": [1,]}"#,
            r#"{"other": "\q"}"#,
            r#"{"other": tru}"#,
            r#"{"other": .5}"#,
            r#"{"other": 1.}"#,
            r#"{"other": 1e}"#,
            r#"{"other": -}"#,
            r#"{"evaluationResults": 5}"#,
            r#"{"evaluationResults": [5]}"#,
            r#"{"evalContext": "x"}"#,
            r#"{"flagTags": }"#,
            "null",
            "",
        ];
        for json in refused {
            assert!(
                parse_serde(json.as_bytes()).is_err(),
                "serde_json reads {json}"
            );
            assert!(parse(json.as_bytes()).is_err(), "the reader reads {json}");
        }
        // A lone surrogate in a key of what is passed over (an entity's context is the
        // client's) does not make the answer unreadable, as it does not for serde_json.
        for odd in [
            r#"{"evalContext": {"entityContext": {"\udead": 1}}, "flagID": 1}"#,
            r#"{"other": {"\ud800": {"\udc00x": []}}, "flagID": 1}"#,
        ] {
            let mine = parse(odd.as_bytes()).unwrap();
            assert_eq!(mine, parse_serde(odd.as_bytes()).unwrap());
            assert_eq!(mine[0].flag_id, Some(1));
        }
        // In a key of the result itself it is decoded, by both.
        let key = r#"{"\ud800": 1, "flagID": 1}"#;
        assert_eq!(
            parse(key.as_bytes()).is_ok(),
            parse_serde(key.as_bytes()).is_ok()
        );
        // Nesting past the limit, even where serde_json passes over it without a limit.
        let deep = format!(r#"{{"other": {}{}}}"#, "[".repeat(200), "]".repeat(200));
        assert!(parse(deep.as_bytes()).is_err());
        let fits = format!(r#"{{"other": {}{}}}"#, "[".repeat(90), "]".repeat(90));
        assert!(parse(fits.as_bytes()).is_ok());
    }

    /// Every byte of an answer changed in the ways that matter to JSON: wherever the reader
    /// reads the result, serde_json reads the same.
    #[test]
    fn changed_answers_read_as_serde_json_reads_them() {
        let base = ANSWER.as_bytes();
        let mut both_read = 0;
        for at in 0..base.len() {
            for with in [
                None,
                Some(b'"'),
                Some(b'\\'),
                Some(b','),
                Some(b'}'),
                Some(b'1'),
                Some(b' '),
                Some(b'\n'),
            ] {
                let mut v = base.to_vec();
                match with {
                    None => {
                        v.remove(at);
                    }
                    Some(b) => v[at] = b,
                }
                let (mine, theirs) = (parse(&v), parse_serde(&v));
                if let Ok(m) = &mine {
                    let t = theirs.as_ref().unwrap_or_else(|e| {
                        panic!(
                            "read here, not by serde_json ({e}): {}",
                            String::from_utf8_lossy(&v)
                        )
                    });
                    assert_eq!(m, t, "{}", String::from_utf8_lossy(&v));
                    both_read += 1;
                } else {
                    assert!(
                        theirs.is_err(),
                        "serde_json reads, the reader does not: {} ({})",
                        String::from_utf8_lossy(&v),
                        mine.err().unwrap()
                    );
                }
            }
        }
        assert!(
            both_read > base.len(),
            "most changes still read ({both_read})"
        );
    }
}

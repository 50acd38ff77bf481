//! Where a JSON string's content stops being plain: the scan both the answer reader and the
//! record writer run over every string they touch.
//!
//! In: bytes. Out: the index of the first `"`, `\\` or control byte.
//! Never: looks past the slice or assumes it is valid UTF-8 (bytes from 0x80 up are plain).

/// Bytes a JSON string cannot hold as they are.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The first byte at or after `from` that needs escaping, or `s.len()`. Eight bytes at a
/// time: most of what is escaped (names, keys, the runs between quotes) has nothing to escape.
pub(super) fn next_escape(s: &[u8], mut from: usize) -> usize {
    // A byte of `x` is zero where this has its high bit; the lowest such bit is exact (the
    // borrow that can mark a higher byte wrongly only comes from a lower zero byte).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    while let Some(chunk) = s.get(from..from + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        // `"`, `\` or a control byte (below 0x20; bytes from 0x80 up are never escaped).
        let hit = zero(v ^ (ONES * u64::from(b'"')))
            | zero(v ^ (ONES * u64::from(b'\\')))
            | (v.wrapping_sub(ONES * 0x20) & !v & HIGHS);
        if hit != 0 {
            return from + (hit.trailing_zeros() / 8) as usize;
        }
        from += 8;
    }
    while s.get(from).is_some_and(|&b| !NEEDS_ESCAPE[b as usize]) {
        from += 1;
    }
    from
}

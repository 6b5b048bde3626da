//! Byte searches eight bytes at a time ("SIMD within a register"): the decoder's string scan and the
//! detector's URI cuts. Short texts (ids, URIs of a few dozen bytes) are too short for vector searches
//! to pay for their setup; a word at a time is about three instructions per byte against ten.

/// Eight copies of one byte.
pub const fn splat(b: u8) -> u64 {
    0x0101_0101_0101_0101 * b as u64
}

/// The top bit of each byte of `x` that is below `n` (`n` at most 0x80).
///
/// A borrow can also set the bit of a byte after a true one, never before it, so the lowest bit set,
/// even across several such tests ORed together, is exactly the first byte that passes one.
#[inline(always)]
pub const fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(splat(n)) & !x & splat(0x80)
}

/// The top bit of each byte of `x` equal to `b` (with [`below`]'s caveat on later bytes).
#[inline(always)]
pub const fn equal(x: u64, b: u8) -> u64 {
    below(x ^ splat(b), 1)
}

/// Whether `bytes` holds an ASCII capital letter, eight bytes at a time. Exact for every byte: adding
/// at most 0x80 to a byte's low seven bits never carries into the next byte.
pub fn has_ascii_uppercase(bytes: &[u8]) -> bool {
    let upper = |x: u64| {
        let low = x & splat(0x7f);
        let at_least_a = low.wrapping_add(splat(0x80 - b'A'));
        let above_z = low.wrapping_add(splat(0x80 - b'Z' - 1));
        at_least_a & !above_z & !x & splat(0x80)
    };
    find(bytes, upper, |b| b.is_ascii_uppercase()).is_some()
}

/// The offset of the first byte of `bytes` that passes: `word` marks the passing bytes of eight read
/// little-endian (as [`below`] and [`equal`] do), `byte` tests one of the fewer than eight left at the end.
#[inline(always)]
pub fn find(bytes: &[u8], word: impl Fn(u64) -> u64, byte: impl Fn(u8) -> bool) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let found = word(u64::from_le_bytes(w));
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks.remainder().iter().position(|&b| byte(b)).map(|i| at + i)
}

/// The offset of the first byte of `bytes` that is one of `needles`.
#[inline(always)]
pub fn find_any3(bytes: &[u8], [x, y, z]: [u8; 3]) -> Option<usize> {
    find(bytes, |w| equal(w, x) | equal(w, y) | equal(w, z), |b| b == x || b == y || b == z)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_at_a_time_finds_what_a_byte_at_a_time_finds() {
        // Every placement of up to two needles among bytes that borrow (0x00, 0x01, the needles' neighbours)
        // in texts of every length up to 24: the first needle, never one after it or a neighbour.
        let fill = [b'a', 0x00, 0x01, b'.', b'0', b'/' - 1, b'/' + 1, 0xff, 0xc3];
        for len in 0..24 {
            for f in fill {
                for i in 0..=len {
                    for j in i..=len {
                        let mut t = vec![f; len];
                        if i < len {
                            t[i] = b'/';
                        }
                        if j < len {
                            t[j] = b'#';
                        }
                        let want = t.iter().position(|&b| b == b'/' || b == b'?' || b == b'#');
                        assert_eq!(find_any3(&t, [b'/', b'?', b'#']), want, "{t:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn capitals_are_found_in_every_byte_and_nothing_else_is() {
        for b in 0..=255u8 {
            for at in 0..17 {
                let mut t = vec![b'a'; 17];
                t[at] = b;
                assert_eq!(has_ascii_uppercase(&t), b.is_ascii_uppercase(), "{b:#x} at {at}");
            }
        }
        assert!(!has_ascii_uppercase(b""));
    }

    #[test]
    fn below_marks_the_bytes_under_its_bound() {
        let x = u64::from_le_bytes([0x1f, 0x20, b'a', 0x00, 0x7f, 0x80, 0x19, 0x21]);
        let marked: Vec<usize> = (0..8).filter(|i| below(x, 0x20) & (0x80 << (8 * i)) != 0).collect();
        // 0x1f, 0x00 and 0x19 are marked; a byte after a true one may be too (0x20, borrowed from), a
        // byte of 0x80 or more never is, and nothing comes before the first true one.
        assert_eq!(marked[0], 0);
        assert!([0, 3, 6].iter().all(|i| marked.contains(i)), "{marked:?}");
        assert!(!marked.contains(&5), "{marked:?}");
        assert_eq!(find(&x.to_le_bytes(), |w| below(w, 0x20), |b| b < 0x20), Some(0));
    }
}

//! A chunk's Bloom filters (docs/storage.md, "Bloom filters"): `m` bits, 10 per distinct
//! token rounded up to a multiple of 64, and `k` = 7 bits per token from two halves of
//! the token's XXH3 hash. The workers build them; the api tests them.

use std::collections::HashSet;

use xxhash_rust::xxh3::xxh3_64;

/// Bits set per token.
pub const HASHES: u64 = 7;
/// Bits of filter per distinct token.
const BITS_PER_TOKEN: usize = 10;

/// The two 31-bit numbers a token's bits come from, as PostgreSQL's test takes them:
/// `h1 = h mod 2³¹` and `h2 = (h >> 32) mod 2³¹` with its lowest bit set, where `h` is
/// the 64-bit XXH3 hash of the token (seed 0).
pub fn hashes(token: &[u8]) -> (i64, i64) {
    let hash = xxh3_64(token);
    let h1 = (hash & 0x7fff_ffff) as i64;
    let h2 = ((hash >> 32) & 0x7fff_ffff | 1) as i64;
    (h1, h2)
}

/// The bits a token sets in a filter of `bits` bits.
fn positions(token: &[u8], bits: u64) -> impl Iterator<Item = u64> {
    let (h1, h2) = hashes(token);
    (0..HASHES).map(move |i| (h1 as u64 + i * h2 as u64) % bits)
}

/// The filter of `tokens` (repeats count once).
pub fn build<'a>(tokens: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let distinct: HashSet<&[u8]> = tokens.into_iter().collect();
    let bits = (distinct.len() * BITS_PER_TOKEN).div_ceil(64).max(1) * 64;
    let mut filter = vec![0u8; bits / 8];
    for token in distinct {
        for bit in positions(token, bits as u64) {
            filter[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
    filter
}

/// Whether `filter` may hold `token`: false means it does not.
pub fn may_contain(filter: &[u8], token: &[u8]) -> bool {
    may_hold(filter, hashes(token))
}

/// Whether `filter` may hold the token of `hashes` ([`hashes`]): false means it does not.
pub fn may_hold(filter: &[u8], (h1, h2): (i64, i64)) -> bool {
    let bits = filter.len() as u64 * 8;
    bits > 0
        && (0..HASHES).all(|i| {
            let bit = (h1 as u64 + i * h2 as u64) % bits;
            filter[(bit / 8) as usize] & (1 << (bit % 8)) != 0
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_added_is_found_and_few_others_are() {
        let tokens: Vec<Vec<u8>> = (0..2000)
            .map(|i| format!("token {i}").into_bytes())
            .collect();
        let filter = build(tokens.iter().map(Vec::as_slice));
        assert_eq!(filter.len(), 20_032 / 8);
        assert!(tokens.iter().all(|token| may_contain(&filter, token)));
        let false_positives = (0..10_000)
            .filter(|i| may_contain(&filter, format!("absent {i}").as_bytes()))
            .count();
        // 10 bits and 7 hashes per token: about 0.8 %.
        assert!(false_positives < 200, "{false_positives} of 10,000");
    }

    #[test]
    fn an_empty_filter_has_64_bits_and_holds_nothing() {
        let filter = build(std::iter::empty());
        assert_eq!(filter.len(), 8);
        assert!(!may_contain(&filter, b"x"));
    }

    #[test]
    fn the_hashes_are_the_ones_stored_filters_were_made_with() {
        // A change here would make every stored filter answer wrongly (the figures are
        // those of Python's xxhash.xxh3_64 too).
        assert_eq!(hashes(b"val"), (631_432_590, 816_585_225));
    }
}

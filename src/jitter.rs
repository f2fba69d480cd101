//! Randomness for retry jitter, shared by the store's compare-and-swap retries and the
//! client's reconnect backoff: spreading retries out needs no cryptographic randomness.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// A number in [0, 1) that differs from call to call (std's randomly keyed hasher over a
/// counter).
pub fn random_fraction() -> f64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_lie_in_the_unit_interval_and_vary() {
        let fractions: Vec<f64> = (0..100).map(|_| random_fraction()).collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        let distinct: std::collections::BTreeSet<u64> =
            fractions.iter().map(|f| f.to_bits()).collect();
        assert!(distinct.len() > 90, "{} distinct of 100", distinct.len());
    }
}

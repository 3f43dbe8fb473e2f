//! Which Redis instance holds a topic: a jump consistent hash (Lamping and
//! Veach, 2014) of the topic name's 64-bit FNV-1a hash.
//!
//! Adding an instance to N moves about 1/(N+1) of the topics, each to the
//! new instance; the others keep theirs. A moved topic starts a new epoch
//! on its new instance (its offsets and history stay behind on the old
//! one), so its clients resume with `recovered:false` once.

/// 64-bit FNV-1a of `bytes` (offset basis 0xcbf29ce484222325, prime
/// 0x100000001b3).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The bucket in `0..buckets` (at least 1) of `key` by jump consistent
/// hashing.
pub fn jump(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets.max(1) as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

/// The shard of `topic` among `shards` instances.
pub fn shard_of(topic: &str, shards: usize) -> usize {
    jump(fnv1a(topic.as_bytes()), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn jump_spreads_evenly_and_moves_little_when_a_shard_is_added() {
        let topics: Vec<String> = (0..10_000).map(|i| format!("topic.{i}")).collect();
        let mut counts = [0usize; 3];
        for t in &topics {
            counts[shard_of(t, 3)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (3000..3700).contains(&c)),
            "{counts:?}"
        );
        let moved = topics
            .iter()
            .filter(|t| shard_of(t, 3) != shard_of(t, 4))
            .inspect(|t| assert_eq!(shard_of(t, 4), 3, "moves only to the new shard"))
            .count();
        assert!((2200..2800).contains(&moved), "{moved} of 10000 moved");
        assert!(topics.iter().all(|t| shard_of(t, 1) == 0));
    }
}

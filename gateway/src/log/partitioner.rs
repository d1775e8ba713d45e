//! Kafka's default partitioner, so a key lands in the same partition through Courier as through a Kafka
//! client, and records move between the embedded log and Kafka without reordering per key.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{NewRecord, validate};
use crate::Result;

/// Seed of Kafka's `Utils.murmur2`.
const KAFKA_MURMUR2_SEED: u32 = 0x9747_b28c;

/// Kafka's murmur2 hash of a key, as a signed 32-bit value (what `Utils.murmur2` returns in Java).
pub fn murmur2(key: &[u8]) -> i32 {
    // Reinterpreting the bits is the point: Java's hash is a signed int.
    murmur2::murmur2(key, KAFKA_MURMUR2_SEED) as i32
}

/// The partition for a keyed record: `toPositive(murmur2(key)) % partitions`, as in Kafka.
pub fn partition_for_key(key: &[u8], partitions: u32) -> i32 {
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    // `partitions` is at least 1 (validated at topic creation) and at most 10000, so this fits an i32.
    (positive % partitions.max(1)) as i32
}

/// Spreads records without key or partition over the partitions, one batch at a time (Kafka's sticky
/// partitioner keeps a batch together the same way, for the same reason: fewer, larger writes).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The partition for the next batch of unkeyed records.
    pub fn next_partition(&self, partitions: u32) -> i32 {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        (turn % partitions.max(1) as usize) as i32
    }
}

/// The partition of each record of one batch: its explicit partition (checked against `partitions`),
/// else its key's, else one round-robin partition shared by the batch's unkeyed records.
pub fn choose(
    topic: &str,
    records: &[NewRecord],
    partitions: u32,
    round_robin: &RoundRobin,
) -> Result<Vec<i32>> {
    let unkeyed = round_robin.next_partition(partitions);
    records
        .iter()
        .map(|record| match (record.partition, &record.key) {
            (Some(partition), _) => {
                validate::partition(topic, partition, partitions).map(|_| partition)
            }
            (None, Some(key)) => Ok(partition_for_key(key, partitions)),
            (None, None) => Ok(unkeyed),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn matches_kafka_murmur2() {
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    #[test]
    fn keyed_partition_is_stable_and_in_range() {
        for partitions in 1..20 {
            let partition = partition_for_key(b"device-42", partitions);
            assert!((0..partitions as i32).contains(&partition));
            assert_eq!(partition, partition_for_key(b"device-42", partitions));
        }
    }

    #[test]
    fn round_robin_visits_every_partition() {
        let round_robin = RoundRobin::default();
        let mut seen: Vec<i32> = (0..6).map(|_| round_robin.next_partition(3)).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 0, 1, 1, 2, 2]);
    }
}

//! Inputs that hit bugs already found and reported, kept out of the targets' way so that they
//! keep fuzzing past them. Each has a reproducer in `artifacts/<target>/repro-*`; remove its guard
//! once the bug is fixed (upstream, or by Courier in front of fe2o3).
//!
//! 1. **Short frames panic fe2o3's frame decoders** (fe2o3-amqp 0.18.4, `frames::amqp` and
//!    `frames::sasl`): a frame size of 4 to 7 leaves fewer bytes than the frame header, which both
//!    decoders read with `Buf::get_u8`/`get_u16`; these panic ("advance out of bounds") in the
//!    connection's task. `frames/repro-short-frame-panics-fe2o3`.
//! 2. **A declared length is allocated before it is read** (serde_amqp 0.18.0, both readers): a
//!    str32, sym32 or vbin32 constructor (0xb1, 0xb3, 0xb0) is followed by a 32-bit length, and
//!    the reader makes room for all of it first: `IoReader::fill_buffer`'s `Vec::resize` (the
//!    reader fe2o3's frame codecs use, Courier's SASL frames included) commits and zeroes it, up
//!    to 4 GiB of resident memory and seconds of CPU for a 9-byte frame body, before the client
//!    has authenticated; `Read::read_bytes`'s `vec![0; len]` (both readers, a delivery's message
//!    too) reserves it, and aborts the process where address space is limited or overcommit is
//!    off. `frames/repro-str32-length-commits-4gib`, `frames/repro-sasl-str32-length-commits-4gib`,
//!    `frames/repro-sym32-length-reserves-4gib`, `mapping/repro-sym32-length-reserves-3gib`,
//!    `mapping/repro-array-of-sym32-reserves-3gib` (in an array, the constructor comes once and
//!    each element is a length and bytes).
//! 3. **A list's count overflows the field count** (serde_amqp 0.18.0, `DescribedAccess::
//!    next_element_seed`: `field_count += consume_list_header()`): a described list whose list32
//!    count is near `u32::MAX` panics where overflow is checked; a release build wraps and reads
//!    the fields wrongly. `frames/repro-list-count-overflows`.
//! 4. **Nested values are decoded by unbounded recursion** (serde_amqp 0.18.0,
//!    `impl Deserialize for Value`: `ValueVisitor::visit_enum` calls `deserialize_enum` again for
//!    every list, map, array or described value inside): about 1,700 to 3,500 levels (8 to 32 KB)
//!    overflow a tokio worker's 2 MiB stack, which aborts the whole gateway. Any value a client
//!    sends can nest: a delivery's body or properties (1 MiB allowed), a Begin's or Attach's
//!    properties or a source's filters (one 64 KiB frame). `mapping/repro-nested-*`,
//!    `frames/repro-begin-properties-nested-overflows-stack`. Inputs nesting deeper than
//!    [`MAX_NESTING`] are skipped.
//! 5. **A compound's header underflows** (serde_amqp 0.18.0): a list, map or array whose size is
//!    smaller than its own count field (`len - OFFSET_LIST8` and the like in `deserialize_seq`,
//!    `deserialize_map` and arrays), or a map of an odd count (`MapAccess::next_entry_seed`:
//!    `count -= 2`; serde_amqp also reads the values inside an array of maps as maps), panics where
//!    overflow is checked; a release build wraps, and the size goes unused, or the map is read
//!    until the bytes fail. `frames/repro-map8-size-underflows`,
//!    `mapping/repro-list8-size-underflows`, `mapping/repro-map8-odd-count-underflows`.
//! 6. **Arrays do not survive encoding and decoding** (serde_amqp 0.18.0): its decoder keeps an
//!    array's element constructor after the array's elements, and reads the values inside an
//!    array's lists, maps and arrays, and the value after an array that is a map key, with it
//!    ("Invalid format code", or other values); its encoder writes a described element's
//!    descriptor again for every element, and an array of elements encoded in no bytes (null,
//!    list0) with a byte too many (`[null, null]` is `e0 03 02 40 40`, AMQP's is `e0 02 02 40`).
//!    A body holding such an array (an amqp-value, a sequence) is stored as serde_amqp encodes it,
//!    and comes back to a receiver as a data section of those bytes, as other values, or as a
//!    message that does not decode at the client. `mapping/repro-array-of-nulls-encodes-malformed`,
//!    `mapping/repro-array-of-maps-not-read-back`, `mapping/repro-array-key-misreads-the-next-value`.
//!    Courier now refuses such a body (`mapping::encode_body`: an array of nulls, empty lists or
//!    described values, or one that does not read back as sent) and an application property
//!    holding a map, list or array (AMQP 1.0 §3.2.5 allows simple values only), so the mapping
//!    target checks that every body it stores comes back as sent; it still does not encode back a
//!    message whose body holds an array (`mapping/repro-property-array-encodes-malformed`).
//! 7. **A map keyed by a timestamp panics the encoder** (serde_amqp 0.18.0, `Serializer`: the
//!    timestamp's type, noted for the key, is left for the value after it; `serialize_str` meets it
//!    and reaches `unreachable!()`). A body holding such a map, an amqp-value a client sends,
//!    panicked the link's task when the gateway stored it; other values after the key may be
//!    written as timestamps. Courier refuses such a body (`mapping::encode_body`), so this input
//!    needs no guard here. `mapping/repro-timestamp-map-key-panics-encoder`.
//!
//! Bugs 3 and 5 are not guarded against: serde_amqp is built without overflow checks here (see
//! Cargo.toml), as in the gateway's release builds, so its reproducers panic only in a build that
//! checks them (serde_amqp's own tests, say).

use std::sync::OnceLock;

use fe2o3_amqp::types::{
    messaging::{AmqpSequence, AmqpValue, ApplicationProperties, Body},
    primitives::{SimpleValue, Value},
};

/// Set to play inputs that hit these bugs anyway: `COURIER_FUZZ_UNGUARDED=1 cargo fuzz run
/// frames artifacts/frames/repro-*` shows whether a bug is still there.
const UNGUARDED: &str = "COURIER_FUZZ_UNGUARDED";

fn guarded() -> bool {
    static GUARDED: OnceLock<bool> = OnceLock::new();
    *GUARDED.get_or_init(|| std::env::var_os(UNGUARDED).is_none())
}

/// Deepest nesting the targets decode (bug 4): far from what overflows the fuzzer's stack.
pub const MAX_NESTING: usize = 256;

/// The smallest frame: its 8-byte header (size, data offset, type, channel).
const FRAME_HEADER: usize = 8;

/// Bug 6: an array anywhere in `body`.
pub fn holds_an_array(body: &Body<Value>) -> bool {
    guarded()
        && match body {
            Body::Value(AmqpValue(value)) => in_value(value),
            Body::Sequence(sequences) => sequences
                .iter()
                .any(|AmqpSequence(items)| items.iter().any(in_value)),
            Body::Data(_) | Body::Empty => false,
        }
}

/// Bug 6: an array anywhere in `value`.
fn in_value(value: &Value) -> bool {
    match value {
        Value::Array(_) => true,
        Value::List(items) => items.iter().any(in_value),
        Value::Map(map) => map
            .iter()
            .any(|(key, value)| in_value(key) || in_value(value)),
        Value::Described(described) => in_value(&described.value),
        _ => false,
    }
}

/// Bug 6: an array in an application property's value (fe2o3 reads a described value there).
pub fn properties_hold_an_array(properties: Option<&ApplicationProperties>) -> bool {
    guarded()
        && properties.is_some_and(|properties| {
            properties.0.values().any(|value| match value {
                SimpleValue::Described(described) => in_value(&described.value),
                _ => false,
            })
        })
}

/// Bug 1: a frame (the bytes after its size field) too short for the frame header.
pub fn short_frame(frame: &[u8]) -> bool {
    guarded() && frame.len() < FRAME_HEADER - 4
}

/// Bugs 2 and 4 in AMQP-encoded bytes (a frame body, a message).
pub fn in_encoded(bytes: &[u8]) -> bool {
    guarded()
        && (oversized_length(bytes) || {
            let scan = Scan::of(bytes);
            scan.oversized_length || scan.deepest > MAX_NESTING
        })
}

/// Bug 2: somewhere in `bytes`, what would decode as a 32-bit-length binary, string or symbol
/// claims more bytes than follow it. Checked at every offset (a payload's bytes may hide one as
/// well as an encoded value), so some harmless inputs are skipped too; an array's elements, which
/// have no constructor of their own, are checked by [`Scan`].
fn oversized_length(bytes: &[u8]) -> bool {
    bytes.windows(5).enumerate().any(|(offset, window)| {
        let claimed = u32::from_be_bytes([window[1], window[2], window[3], window[4]]) as usize;
        matches!(window[0], 0xb0 | 0xb1 | 0xb3) && claimed > bytes.len() - offset - 5
    })
}

/// The encoded values `bytes` starts with (AMQP 1.0 §1.6), walked as far as they make sense: how
/// deep lists, maps, arrays and described values nest (bug 4), and whether a 32-bit length claims
/// more bytes than follow (bug 2). The walk itself recurses at most `MAX_NESTING + 1` deep.
#[derive(Debug, Default)]
struct Scan<'a> {
    bytes: &'a [u8],
    position: usize,
    deepest: usize,
    oversized_length: bool,
}

impl<'a> Scan<'a> {
    fn of(bytes: &'a [u8]) -> Self {
        let mut scan = Self {
            bytes,
            ..Self::default()
        };
        while scan.position < bytes.len() && scan.value(1).is_some() {}
        scan
    }

    /// One value at `depth`; `None` when the bytes end, make no sense, or nest too deep.
    fn value(&mut self, depth: usize) -> Option<()> {
        let constructor = self.byte()?;
        self.body(constructor, depth)
    }

    fn body(&mut self, constructor: u8, depth: usize) -> Option<()> {
        if constructor == 0x00 {
            // Described: a descriptor, then the value.
            self.enter(depth)?;
            self.value(depth + 1)?;
            return self.value(depth + 1);
        }
        match constructor >> 4 {
            0x4 => Some(()),
            0x5 => self.skip(1),
            0x6 => self.skip(2),
            0x7 => self.skip(4),
            0x8 => self.skip(8),
            0x9 => self.skip(16),
            0xa => {
                let length = self.byte()?;
                self.skip(usize::from(length))
            }
            0xb => {
                let length = self.word()?;
                let skipped = self.skip(length);
                self.oversized_length |= skipped.is_none();
                skipped
            }
            // Lists and maps: size, count, then each element with its constructor.
            0xc | 0xd => {
                self.enter(depth)?;
                let count = self.compound_header(constructor >> 4 == 0xc)?;
                (0..count).try_for_each(|_| self.value(depth + 1))
            }
            // Arrays: size, count, one constructor, then each element's body.
            0xe | 0xf => {
                self.enter(depth)?;
                let count = self.compound_header(constructor >> 4 == 0xe)?;
                let mut element = self.byte()?;
                if element == 0x00 {
                    self.value(depth + 1)?;
                    element = self.byte()?;
                }
                // Bodies of no bytes (null, true, list0...): nothing to walk, however many.
                if element >> 4 == 0x4 {
                    return Some(());
                }
                (0..count).try_for_each(|_| self.body(element, depth + 1))
            }
            _ => None,
        }
    }

    fn enter(&mut self, depth: usize) -> Option<()> {
        self.deepest = self.deepest.max(depth);
        (depth <= MAX_NESTING).then_some(())
    }

    /// A compound's size and count (one byte each, or four): the count.
    fn compound_header(&mut self, narrow: bool) -> Option<usize> {
        if narrow {
            self.byte()?;
            Some(usize::from(self.byte()?))
        } else {
            self.word()?;
            self.word()
        }
    }

    fn byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.position)?;
        self.position += 1;
        Some(byte)
    }

    fn word(&mut self) -> Option<usize> {
        let bytes = self.bytes.get(self.position..self.position + 4)?;
        self.position += 4;
        Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
    }

    fn skip(&mut self, length: usize) -> Option<()> {
        let end = self.position.checked_add(length)?;
        (end <= self.bytes.len()).then(|| self.position = end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_measured_for_each_shape() {
        // amqp-value holding list32 [list32 [list0]]: depth 1 (described) + 2 lists + list0.
        let lists = [
            0x00, 0x53, 0x77, 0xd0, 0, 0, 0, 14, 0, 0, 0, 1, 0xd0, 0, 0, 0, 5, 0, 0, 0, 1, 0x45,
        ];
        assert_eq!(Scan::of(&lists).deepest, 3);
        let described = [0x00, 0x53, 0x01, 0x00, 0x53, 0x01, 0x40];
        assert_eq!(Scan::of(&described).deepest, 2);
        assert!(!in_encoded(&lists));
    }
}

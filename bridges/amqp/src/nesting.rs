//! How deep an AMQP encoding nests, found without recursion before anything decodes it.
//!
//! serde_amqp, which fe2o3 decodes every frame and message with, recurses once per level of
//! nesting (a list in a list, a map's value, an array's element, a described value) with no bound,
//! so a few kilobytes of nested list headers overflow the stack of whatever thread decodes them and
//! abort the whole process. A [`Scanner`] walks the same bytes with a stack of its own, bounded by
//! its limit, and says where they nest deeper than that or are not a well-formed encoding.
//!
//! Well-formed means more than "nests little": the scanner's reading of the bytes must be the
//! decoder's, or a value it saw as leaf content (a binary's bytes, say) could be decoded as many
//! levels of lists. So a list's or map's size and count must agree with the items that follow, and
//! an array's with its elements (serde_amqp believes the count, and a size that disagrees would have
//! the scanner read on where it stopped); and where serde_amqp 0.18 reads differently from the spec,
//! the encoding is refused rather than read two ways:
//! - an empty array with an element constructor: serde_amqp reads none, and would decode the
//!   constructor as the next value;
//! - an array of more than one list, map or array: serde_amqp reads the second element's size
//!   field as a constructor;
//! - an array of described values: serde_amqp reads a descriptor before every element, not once.
//!
//! fe2o3 could not decode any of these three correctly either.
//!
//! It takes its input in pieces of any size (a message arrives over several transfer frames), keeps
//! nothing of it but a few header bytes, and costs one pass.

use std::fmt;

/// The deepest nesting the gateway decodes. AMQP's own structures nest about eight levels (a
/// performative's source holds a filter map of described values); 64 leaves applications room.
pub(crate) const MAX_NESTING: usize = 64;

/// Why a scanned encoding is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Values nest deeper than the scanner's limit.
    TooDeep(usize),
    /// Not a well-formed AMQP encoding.
    Malformed(&'static str),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooDeep(limit) => write!(f, "values nested deeper than {limit} levels"),
            Self::Malformed(why) => write!(f, "malformed AMQP encoding: {why}"),
        }
    }
}

/// Walks a sequence of AMQP-encoded values, fed in pieces.
#[derive(Debug, Clone)]
pub(crate) struct Scanner {
    limit: usize,
    /// Bytes fed so far.
    position: u64,
    next: Next,
    /// Open values, innermost last: the levels a decoder would be in.
    open: Vec<Open>,
    /// Top-level values completed.
    values: u64,
}

/// What the next bytes are.
#[derive(Debug, Clone, Copy)]
enum Next {
    /// A value, starting with its constructor.
    Value,
    /// An array's element constructor.
    ElementConstructor,
    /// The size (and count) fields after format code `code`: `have` of `need` bytes are in `bytes`.
    Fields {
        code: u8,
        bytes: [u8; 8],
        have: u8,
        need: u8,
    },
    /// Leaf content to pass over.
    Skip(u64),
}

/// A value being read that holds others.
#[derive(Debug, Clone, Copy)]
enum Open {
    /// A list or a map: `items` still to come before `end`.
    Compound { items: u32, end: u64 },
    /// An array: `elements` still to come before `end`, each a body of `element` (unknown until
    /// the element constructor is read).
    Array {
        elements: u32,
        end: u64,
        element: Option<u8>,
    },
    /// A described value: descriptor and value, `left` of the two still to come.
    Described { left: u8 },
}

/// How a format code's body is laid out, by its subcategory (AMQP 1.0 §1.6, the high nibble).
enum Layout {
    /// This many bytes.
    Fixed(u64),
    /// A size field of this many bytes, then that many bytes.
    Variable(u8),
    /// A list or map: size and count fields of this many bytes each, then the items.
    Compound(u8),
    /// An array: size and count fields of this many bytes each, the element constructor, then the
    /// elements.
    Array(u8),
}

fn layout(code: u8) -> Result<Layout, Fault> {
    Ok(match code >> 4 {
        0x4 => Layout::Fixed(0),
        0x5 => Layout::Fixed(1),
        0x6 => Layout::Fixed(2),
        0x7 => Layout::Fixed(4),
        0x8 => Layout::Fixed(8),
        0x9 => Layout::Fixed(16),
        0xa => Layout::Variable(1),
        0xb => Layout::Variable(4),
        0xc => Layout::Compound(1),
        0xd => Layout::Compound(4),
        0xe => Layout::Array(1),
        0xf => Layout::Array(4),
        _ => return Err(Fault::Malformed("an unknown format code")),
    })
}

/// A map's format codes (0xc1, 0xd1): their counts must be even, a key for every value.
fn is_map(code: u8) -> bool {
    code & 0x0f == 0x01
}

impl Scanner {
    /// A scanner refusing nesting deeper than `limit`.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            position: 0,
            next: Next::Value,
            open: Vec::new(),
            values: 0,
        }
    }

    /// Scans the next bytes of the sequence.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(), Fault> {
        let mut at = 0;
        while at < bytes.len() {
            at += self.step(&bytes[at..])?;
        }
        Ok(())
    }

    /// The length of the first value in `bytes`, scanned with nesting bounded by `limit`: the
    /// performative at the start of a frame's body.
    pub(crate) fn first_value(bytes: &[u8], limit: usize) -> Result<usize, Fault> {
        let mut scanner = Self::new(limit);
        let mut at = 0;
        while scanner.values == 0 {
            if at == bytes.len() {
                return Err(Fault::Malformed("the value ends early"));
            }
            at += scanner.step(&bytes[at..])?;
        }
        Ok(at)
    }

    /// Reads what it can of `bytes` (never empty) as the next thing expected; returns how many
    /// bytes it took.
    fn step(&mut self, bytes: &[u8]) -> Result<usize, Fault> {
        match self.next {
            Next::Skip(left) => {
                let taken = left.min(bytes.len() as u64);
                self.position += taken;
                if taken == left {
                    self.next = Next::Value;
                    self.item_done()?;
                } else {
                    self.next = Next::Skip(left - taken);
                }
                // `taken` is at most `bytes.len()`.
                Ok(taken as usize)
            }
            Next::Value => {
                self.position += 1;
                self.constructor(bytes[0])?;
                Ok(1)
            }
            Next::ElementConstructor => {
                self.position += 1;
                self.element_constructor(bytes[0])?;
                Ok(1)
            }
            Next::Fields {
                code,
                bytes: mut fields,
                have,
                need,
            } => {
                let taken = usize::from(need - have).min(bytes.len());
                let from = usize::from(have);
                fields[from..from + taken].copy_from_slice(&bytes[..taken]);
                self.position += taken as u64;
                // `taken` is at most `need - have`, a u8.
                let have = have + taken as u8;
                if have == need {
                    self.fields_read(code, &fields[..usize::from(need)])?;
                } else {
                    self.next = Next::Fields {
                        code,
                        bytes: fields,
                        have,
                        need,
                    };
                }
                Ok(taken)
            }
        }
    }

    /// A value's constructor: a format code, or 0x00 for a described value.
    fn constructor(&mut self, code: u8) -> Result<(), Fault> {
        if code == 0x00 {
            self.push(Open::Described { left: 2 })?;
            self.next = Next::Value;
            return Ok(());
        }
        self.body(code)
    }

    /// The body of a value whose format code is `code` (an array's elements have no constructor of
    /// their own, only bodies).
    fn body(&mut self, code: u8) -> Result<(), Fault> {
        let need = match layout(code)? {
            Layout::Fixed(width) => return self.leaf(width),
            Layout::Variable(size) => size,
            // Size and count.
            Layout::Compound(width) | Layout::Array(width) => 2 * width,
        };
        self.next = Next::Fields {
            code,
            bytes: [0; 8],
            have: 0,
            need,
        };
        Ok(())
    }

    /// Leaf content of `len` bytes, which must fit in the value around it.
    fn leaf(&mut self, len: u64) -> Result<(), Fault> {
        self.fits(len)?;
        if len == 0 {
            self.next = Next::Value;
            self.item_done()
        } else {
            self.next = Next::Skip(len);
            Ok(())
        }
    }

    /// The size (and count) fields of format code `code` have been read.
    fn fields_read(&mut self, code: u8, fields: &[u8]) -> Result<(), Fault> {
        let width = fields.len() / 2;
        let number = |bytes: &[u8]| {
            bytes
                .iter()
                .fold(0u32, |n, byte| (n << 8) | u32::from(*byte))
        };
        match layout(code)? {
            Layout::Variable(_) => self.leaf(u64::from(number(fields))),
            Layout::Fixed(_) => Err(Fault::Malformed("a fixed-width value with fields")),
            Layout::Compound(_) => {
                let (size, count) = (number(&fields[..width]), number(&fields[width..]));
                let end = self.end_of(size, width)?;
                if is_map(code) && count % 2 == 1 {
                    return Err(Fault::Malformed("a map with a key and no value"));
                }
                // Every item is at least its one-byte constructor.
                if u64::from(count) > end - self.position {
                    return Err(Fault::Malformed(
                        "a list or map counts more items than its size holds",
                    ));
                }
                if count == 0 {
                    return self.empty_at(end);
                }
                self.push(Open::Compound { items: count, end })?;
                self.next = Next::Value;
                Ok(())
            }
            Layout::Array(_) => {
                let (size, count) = (number(&fields[..width]), number(&fields[width..]));
                let end = self.end_of(size, width)?;
                if count == 0 {
                    if end != self.position {
                        return Err(Fault::Malformed(
                            "an empty array with an element constructor (serde_amqp reads none)",
                        ));
                    }
                    return self.empty_at(end);
                }
                if end == self.position {
                    return Err(Fault::Malformed("an array without an element constructor"));
                }
                self.push(Open::Array {
                    elements: count,
                    end,
                    element: None,
                })?;
                self.next = Next::ElementConstructor;
                Ok(())
            }
        }
    }

    /// Where a list, map or array whose size field said `size` ends; the size counts the bytes
    /// after the size field, the count field (`width` bytes, just read) among them.
    fn end_of(&self, size: u32, width: usize) -> Result<u64, Fault> {
        let width = width as u64;
        if u64::from(size) < width {
            return Err(Fault::Malformed("a size smaller than the count after it"));
        }
        let end = self.position - width + u64::from(size);
        self.fits(end - self.position)?;
        Ok(end)
    }

    /// An array's element constructor.
    fn element_constructor(&mut self, code: u8) -> Result<(), Fault> {
        if code == 0x00 {
            return Err(Fault::Malformed(
                "an array of described values (serde_amqp reads a descriptor per element)",
            ));
        }
        let layout = layout(code)?;
        let position = self.position;
        let Some(Open::Array {
            elements,
            end,
            element,
        }) = self.open.last_mut()
        else {
            return Err(Fault::Malformed("an element constructor outside an array"));
        };
        *element = Some(code);
        let (count, end) = (*elements, *end);
        match layout {
            // Fixed-width elements are passed over together, as one.
            Layout::Fixed(width) => {
                if u64::from(count) * width != end - position {
                    return Err(Fault::Malformed(
                        "an array's size and count disagree for its element width",
                    ));
                }
                *elements = 1;
                self.leaf(end - position)
            }
            Layout::Compound(_) | Layout::Array(_) if count > 1 => Err(Fault::Malformed(
                "an array of several lists, maps or arrays (serde_amqp misreads the second)",
            )),
            _ => {
                // Every element is at least its one-byte size field.
                if u64::from(count) > end - position {
                    return Err(Fault::Malformed(
                        "an array counts more elements than its size holds",
                    ));
                }
                self.body(code)
            }
        }
    }

    /// A list, map or array with nothing in it ends at `end`.
    fn empty_at(&mut self, end: u64) -> Result<(), Fault> {
        if self.position != end {
            return Err(Fault::Malformed("a size that disagrees with its contents"));
        }
        self.next = Next::Value;
        self.item_done()
    }

    /// A value (or an array element) is complete: count it in the value around it, and close every
    /// value it completes in turn.
    fn item_done(&mut self) -> Result<(), Fault> {
        loop {
            let position = self.position;
            match self.open.last_mut() {
                None => {
                    self.values += 1;
                    self.next = Next::Value;
                    return Ok(());
                }
                Some(Open::Compound { items, end })
                | Some(Open::Array {
                    elements: items,
                    end,
                    ..
                }) => {
                    if position > *end {
                        return Err(Fault::Malformed("a value overruns the value around it"));
                    }
                    *items -= 1;
                    if *items > 0 {
                        if position == *end {
                            return Err(Fault::Malformed(
                                "a list, map or array counts more items than it holds",
                            ));
                        }
                        return self.next_item();
                    }
                    if position != *end {
                        return Err(Fault::Malformed(
                            "a list, map or array holds more than it counts",
                        ));
                    }
                    self.open.pop();
                }
                Some(Open::Described { left }) => {
                    *left -= 1;
                    if *left > 0 {
                        self.next = Next::Value;
                        return Ok(());
                    }
                    self.open.pop();
                }
            }
        }
    }

    /// The next item of the innermost list, map or array.
    fn next_item(&mut self) -> Result<(), Fault> {
        match self.open.last() {
            Some(Open::Array {
                element: Some(code),
                ..
            }) => self.body(*code),
            _ => {
                self.next = Next::Value;
                Ok(())
            }
        }
    }

    /// Opens a level, refusing it past the limit.
    fn push(&mut self, open: Open) -> Result<(), Fault> {
        if self.open.len() == self.limit {
            return Err(Fault::TooDeep(self.limit));
        }
        self.open.push(open);
        Ok(())
    }

    /// Whether `len` more bytes fit in the innermost list, map or array.
    fn fits(&self, len: u64) -> Result<(), Fault> {
        let end = self.open.iter().rev().find_map(|open| match open {
            Open::Compound { end, .. } | Open::Array { end, .. } => Some(*end),
            _ => None,
        });
        match end {
            Some(end) if self.position + len > end => {
                Err(Fault::Malformed("a value overruns the value around it"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;

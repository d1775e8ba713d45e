//! The codec of the generated services and clients: tonic's prost codec, except that each message
//! is encoded into room reserved for its whole length first.
//!
//! tonic encodes a response into a buffer that starts at 8 KiB, and prost writes a message into it
//! piece by piece: a Subscribe batch of hundreds of records grows it by doubling, copying what was
//! written each time, so every value was copied about twice on its way out. Reserved up front, the
//! buffer grows once and each value is copied once.

use std::marker::PhantomData;

use tonic::{
    Status,
    codec::{Codec, EncodeBuf, Encoder},
};
use tonic_prost::{ProstDecoder, prost::Message};

/// tonic's prost codec, with [`ReservingEncoder`] (named by `build.rs` as the generated code's
/// codec).
#[derive(Debug, Clone, Copy)]
pub struct ReservingCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ReservingCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ReservingCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ReservingEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Encodes a message into room reserved for all of it.
#[derive(Debug, Clone, Copy)]
pub struct ReservingEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for ReservingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        // With the room reserved, `encode`'s own check (another walk of the message to size it)
        // has nothing left to refuse.
        item.encode_raw(buf);
        Ok(())
    }
}

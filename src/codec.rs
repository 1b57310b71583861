//! The protobuf codec of every gRPC service and client: prost's encoding, with one change in
//! what a malformed message answers. prost names the message and field it could not decode
//! (`StatusRequest.group: invalid string value: data is not UTF-8 encoded`); the caller sent
//! it, so it is `INVALID_ARGUMENT` with that text, not the `INTERNAL` of tonic's own codec,
//! which reads as a fault of the witness and invites a retry.
//!
//! This module must never decode differently from prost: only the status of a failure changes.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstEncoder};

/// prost's codec with [`MessageDecoder`] (named by `codec_path` in `build.rs`).
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(PhantomData)
    }
}

/// Decodes `U` as prost does; a malformed message is `INVALID_ARGUMENT` naming the field.
#[derive(Debug, Clone)]
pub struct MessageDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

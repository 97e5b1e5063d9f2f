//! The exporter's encoder: an `ExportTraceServiceRequest` written straight from the span
//! records with prost's wire primitives into buffers it reuses, so that a span costs no
//! allocation (building the [`super::proto`] messages costs about twenty: a `String` per
//! attribute key and value). The resource and the instrumentation scope are encoded once, from
//! the prost model. Tests hold every span's bytes equal to the prost model's encoding of
//! [`super::span`], and the integration tests decode the result with opentelemetry-proto.
//! Must not: allocate per span once its buffers have grown.

use std::fmt::Write as _;
use std::io::Write as _;

use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use weir_proxy::trace::SpanRecord;

use super::proto;

/// Encodes batches of spans under one resource and scope.
#[derive(Debug)]
pub struct Encoder {
    resource: Vec<u8>,
    scope: Vec<u8>,
    one: Vec<u8>,
    spans: Vec<u8>,
    text: String,
}

fn len_delimited(field: u32, data: &[u8], out: &mut Vec<u8>) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

fn fixed64(field: u32, v: u64, out: &mut Vec<u8>) {
    encode_key(field, WireType::SixtyFourBit, out);
    out.extend_from_slice(&v.to_le_bytes());
}

/// `Span.attributes` (field 9): a string `KeyValue`.
fn attr_str(key: &str, value: &[u8], out: &mut Vec<u8>) {
    let any = 1 + encoded_len_varint(value.len() as u64) + value.len();
    let kv = 1 + encoded_len_varint(key.len() as u64) + key.len() + 1 + encoded_len_varint(any as u64) + any;
    encode_key(9, WireType::LengthDelimited, out);
    encode_varint(kv as u64, out);
    len_delimited(1, key.as_bytes(), out);
    encode_key(2, WireType::LengthDelimited, out);
    encode_varint(any as u64, out);
    len_delimited(1, value, out);
}

/// `Span.attributes` (field 9): an integer `KeyValue` (`int_value`, field 3 of `AnyValue`).
fn attr_int(key: &str, value: i64, out: &mut Vec<u8>) {
    let any = 1 + encoded_len_varint(value as u64);
    let kv = 1 + encoded_len_varint(key.len() as u64) + key.len() + 1 + encoded_len_varint(any as u64) + any;
    encode_key(9, WireType::LengthDelimited, out);
    encode_varint(kv as u64, out);
    len_delimited(1, key.as_bytes(), out);
    encode_key(2, WireType::LengthDelimited, out);
    encode_varint(any as u64, out);
    encode_key(3, WireType::Varint, out);
    encode_varint(value as u64, out);
}

impl Encoder {
    /// An encoder for spans of `resource`, under weir's instrumentation scope.
    pub fn new(resource: &proto::Resource) -> Encoder {
        let scope = proto::InstrumentationScope { name: "weir".into(), version: env!("CARGO_PKG_VERSION").into() };
        Encoder {
            resource: resource.encode_to_vec(),
            scope: scope.encode_to_vec(),
            one: Vec::with_capacity(512),
            spans: Vec::new(),
            text: String::with_capacity(128),
        }
    }

    /// One span's `Span` message (without its own field header) into `self.one`, as
    /// [`super::span`] would encode with prost (fields in the same order).
    fn span(&mut self, r: &SpanRecord) {
        let out = &mut self.one;
        out.clear();
        len_delimited(1, &r.trace_id, out);
        len_delimited(2, &r.span_id, out);
        let remote_parent = r.parent_span_id != [0; 8];
        if remote_parent {
            len_delimited(4, &r.parent_span_id, out);
        }
        let (service, method) = (r.service.as_bytes(), r.method.as_bytes());
        if service.is_empty() {
            if !method.is_empty() {
                len_delimited(5, method, out);
            }
        } else {
            encode_key(5, WireType::LengthDelimited, out);
            encode_varint((method.len() + 1 + service.len()) as u64, out);
            out.extend_from_slice(method);
            out.push(b' ');
            out.extend_from_slice(service);
        }
        encode_key(6, WireType::Varint, out);
        encode_varint(proto::SPAN_KIND_CLIENT as u64, out);
        fixed64(7, r.start_unix_ns, out);
        fixed64(8, r.start_unix_ns + r.duration_ns, out);
        attr_str("weir.service", service, out);
        attr_str("http.request.method", method, out);
        attr_int("weir.attempts", i64::from(r.attempts), out);
        attr_str("weir.outcome", r.outcome().as_bytes(), out);
        attr_str("weir.source", r.source.as_bytes(), out);
        if r.status != 0 {
            attr_int("http.response.status_code", i64::from(r.status), out);
        }
        if let Some(e) = r.endpoint {
            self.text.clear();
            let _ = write!(self.text, "{e}");
            attr_str("weir.endpoint", self.text.as_bytes(), out);
        }
        if r.is_error() {
            let msg = r.outcome().as_bytes();
            let status = 1 + encoded_len_varint(msg.len() as u64) + msg.len() + 1 + 1;
            encode_key(15, WireType::LengthDelimited, out);
            encode_varint(status as u64, out);
            len_delimited(2, msg, out);
            encode_key(3, WireType::Varint, out);
            encode_varint(proto::STATUS_CODE_ERROR as u64, out);
        }
        let flags =
            u32::from(r.flags) | proto::FLAGS_HAS_IS_REMOTE | if remote_parent { proto::FLAGS_IS_REMOTE } else { 0 };
        encode_key(16, WireType::ThirtyTwoBit, out);
        out.extend_from_slice(&flags.to_le_bytes());
    }

    /// The protobuf `ExportTraceServiceRequest` of `batch` (not compressed).
    pub fn request(&mut self, batch: &[SpanRecord]) -> Vec<u8> {
        self.spans.clear();
        len_delimited(1, &self.scope, &mut self.spans);
        for r in batch {
            self.span(r);
            len_delimited(2, &self.one, &mut self.spans);
        }
        // ScopeSpans inside ResourceSpans inside the request.
        let resource_spans_len = 1
            + encoded_len_varint(self.resource.len() as u64)
            + self.resource.len()
            + 1
            + encoded_len_varint(self.spans.len() as u64)
            + self.spans.len();
        let mut out = Vec::with_capacity(resource_spans_len + 16);
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(resource_spans_len as u64, &mut out);
        len_delimited(1, &self.resource, &mut out);
        len_delimited(2, &self.spans, &mut out);
        out
    }

    /// One request body: [`Encoder::request`], gzip.
    pub fn body(&mut self, batch: &[SpanRecord]) -> Vec<u8> {
        let raw = self.request(batch);
        let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 8 + 64), flate2::Compression::fast());
        // Writing into a Vec cannot fail.
        let _ = gz.write_all(&raw);
        gz.finish().unwrap_or_default()
    }
}

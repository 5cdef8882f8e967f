//! Compressed request bodies: `Content-Encoding: gzip | deflate | zstd` (and `identity`).
//!
//! SDKs, Vector's `http` sink, Fluent Bit and OpenTelemetry collectors compress what they send.
//! The body arrives bounded by `max_body_bytes` (compressed); each decoding step is bounded by
//! the same limit *while it streams*, so a small bomb that would expand to gigabytes costs at
//! most the limit (plus the decoder's own window, capped for zstd) before it is refused with 413.
//!
//! The decoders are the ecosystem's (`flate2`, `zstd`); only the header parsing and the size cap
//! live here.

use std::io::Read;

/// Encodings this source decodes, as listed in `Accept-Encoding` of a 415 answer.
pub const SUPPORTED: &str = "gzip, deflate, zstd, identity";

/// Largest zstd window accepted (2^23 = 8 MiB, what `zstd -19` uses). A frame declaring a larger
/// window would make the decoder allocate it up front; such frames are refused as invalid.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// One content coding of a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// RFC 1952 gzip (several members allowed).
    Gzip,
    /// RFC 1950 zlib-wrapped deflate, or raw RFC 1951 deflate as some clients send it.
    Deflate,
    /// RFC 8878 Zstandard.
    Zstd,
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `Content-Encoding` names a coding this source does not decode (→ 415).
    #[error("content encoding {0:?} is not supported; use one of {SUPPORTED}")]
    Unsupported(String),
    /// The decoded body is larger than the limit (→ 413).
    #[error("the decoded body is over {0} bytes")]
    TooLarge(usize),
    /// The body is not valid for its declared coding (→ 400).
    #[error("the body is not valid {coding}: {message}")]
    Invalid {
        /// The coding that failed.
        coding: &'static str,
        /// The decoder's message.
        message: String,
    },
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Zstd => "zstd",
        }
    }
}

/// Parses a `Content-Encoding` header value into the codings applied, in the order they were
/// applied (so decoding goes from the last to the first). `identity` is dropped.
pub fn parse(header: &str) -> Result<Vec<Coding>, DecodeError> {
    let mut out = Vec::new();
    for token in header.split(',') {
        let t = token.trim().to_ascii_lowercase();
        match t.as_str() {
            "" | "identity" => {}
            "gzip" | "x-gzip" => out.push(Coding::Gzip),
            "deflate" => out.push(Coding::Deflate),
            "zstd" => out.push(Coding::Zstd),
            _ => return Err(DecodeError::Unsupported(token.trim().to_string())),
        }
    }
    Ok(out)
}

/// Reads `r` to the end, refusing more than `limit` bytes of output.
fn read_capped(r: impl Read, limit: usize, coding: Coding) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(limit.min(256 * 1024));
    r.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Invalid {
            coding: coding.name(),
            message: e.to_string(),
        })?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge(limit));
    }
    Ok(out)
}

fn decode_one(body: &[u8], coding: Coding, limit: usize) -> Result<Vec<u8>, DecodeError> {
    match coding {
        Coding::Gzip => read_capped(flate2::read::MultiGzDecoder::new(body), limit, coding),
        Coding::Deflate => {
            // RFC 9110 says zlib; some clients send raw deflate. A zlib stream starts with a
            // header whose 16-bit value is a multiple of 31 and whose method is 8.
            let zlib = body.len() >= 2
                && body[0] & 0x0f == 8
                && (u16::from(body[0]) << 8 | u16::from(body[1])) % 31 == 0;
            if zlib {
                read_capped(flate2::read::ZlibDecoder::new(body), limit, coding)
            } else {
                read_capped(flate2::read::DeflateDecoder::new(body), limit, coding)
            }
        }
        Coding::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(body).map_err(|e| {
                DecodeError::Invalid {
                    coding: "zstd",
                    message: e.to_string(),
                }
            })?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| DecodeError::Invalid {
                    coding: "zstd",
                    message: e.to_string(),
                })?;
            read_capped(d, limit, coding)
        }
    }
}

/// Undoes `codings` (as returned by [`parse`]) on `body`, each step capped at `limit` bytes.
pub fn decode(body: &[u8], codings: &[Coding], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut current: Option<Vec<u8>> = None;
    for &c in codings.iter().rev() {
        let input = current.as_deref().unwrap_or(body);
        if input.is_empty() {
            return Err(DecodeError::Invalid {
                coding: c.name(),
                message: "empty body".into(),
            });
        }
        current = Some(decode_one(input, c, limit)?);
    }
    Ok(current.unwrap_or_else(|| body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }

    #[test]
    fn parses_lists_case_insensitively_and_drops_identity() {
        assert_eq!(parse("GZip").expect("ok"), vec![Coding::Gzip]);
        assert_eq!(
            parse("deflate, identity , zstd").expect("ok"),
            vec![Coding::Deflate, Coding::Zstd]
        );
        assert_eq!(parse("identity").expect("ok"), vec![]);
        assert_eq!(
            parse("gzip, br"),
            Err(DecodeError::Unsupported("br".into()))
        );
    }

    #[test]
    fn round_trips_every_coding() {
        let data = br#"[{"a":1},{"b":2}]"#.repeat(100);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&data).expect("write");
        let zlib = z.finish().expect("finish");
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        d.write_all(&data).expect("write");
        let raw = d.finish().expect("finish");
        let zst = zstd::encode_all(&data[..], 3).expect("zstd");
        assert_eq!(
            decode(&gzip(&data), &[Coding::Gzip], 1 << 20).expect("gz"),
            data
        );
        assert_eq!(
            decode(&zlib, &[Coding::Deflate], 1 << 20).expect("zlib"),
            data
        );
        assert_eq!(
            decode(&raw, &[Coding::Deflate], 1 << 20).expect("raw"),
            data
        );
        assert_eq!(decode(&zst, &[Coding::Zstd], 1 << 20).expect("zstd"), data);
        // Applied gzip then zstd: decoded zstd first.
        let both = zstd::encode_all(&gzip(&data)[..], 1).expect("zstd");
        assert_eq!(
            decode(&both, &[Coding::Gzip, Coding::Zstd], 1 << 20).expect("both"),
            data
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![b' '; 50 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024, "{}", bomb.len());
        assert_eq!(
            decode(&bomb, &[Coding::Gzip], 1024 * 1024),
            Err(DecodeError::TooLarge(1024 * 1024))
        );
        let zbomb = zstd::encode_all(&vec![0u8; 50 * 1024 * 1024][..], 3).expect("zstd");
        assert_eq!(
            decode(&zbomb, &[Coding::Zstd], 1024 * 1024),
            Err(DecodeError::TooLarge(1024 * 1024))
        );
    }

    #[test]
    fn garbage_is_invalid_for_its_coding() {
        for c in [Coding::Gzip, Coding::Deflate, Coding::Zstd] {
            let r = decode(br#"{"plain":"json"}"#, &[c], 1 << 20);
            assert!(
                matches!(r, Err(DecodeError::Invalid { .. })),
                "{c:?}: {r:?}"
            );
        }
        // A truncated gzip stream is invalid too, not silently short.
        let g = gzip(&br#"{"a":1}"#.repeat(1000));
        let r = decode(&g[..g.len() / 2], &[Coding::Gzip], 1 << 20);
        assert!(matches!(r, Err(DecodeError::Invalid { .. })), "{r:?}");
    }
}

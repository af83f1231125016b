//! ITU-T G.711 μ-law and A-law as plain functions: the workspace's one implementation.
//!
//! Why here, in the engine crate: [`AudioEncoding::Mulaw`](crate::AudioEncoding::Mulaw) and
//! `Alaw` are formats the engine names, and three crates need the codec: the processors (codec
//! stages, recorder), the transports (Twilio is μ-law; WAV files and browsers are PCM) and the
//! protocol emulators. The transports and emulators sit beside the processors, not above them, so
//! the lowest crate they all share is this one; `voxline_processors::codec::g711` re-exports it.
//!
//! Encoding follows the classic Sun Microsystems `g711.c` (the code sox, libsndfile and most
//! telephony stacks share): the 16-bit sample is first truncated to G.711's 14-bit (μ-law) or
//! 13-bit (A-law) linear range with an *arithmetic* shift, then segment-searched. Decoding goes
//! through 256-entry tables built at compile time, so a decode is one indexed load per sample.
//!
//! Clipping is the standard one: μ-law adds the bias 0x84 and clips magnitudes at 32635
//! (Sun's `CLIP` 8159 and `BIAS >> 2` at 14-bit scale), A-law saturates its top segment, so full
//! scale in either direction encodes to the extreme codes instead of wrapping.
//!
//! The `*_into` buffer helpers append to a caller-owned [`BytesMut`] so a processor can reuse
//! one buffer for every frame instead of allocating; [`encode_mulaw`] and [`decode_mulaw`] are
//! the allocating forms for edges that produce one buffer per message anyway (a websocket
//! message, a file chunk).
//!
//! Note on sox: sox *rounds* 16-bit input to 14/13 bits before the G.711 step, where Sun's code
//! and ITU-T G.191 truncate. The two agree on every sample G.711 defines (14/13-bit values) and
//! differ by one code on 0.8% of arbitrary 16-bit inputs, always at a decision boundary. We keep
//! the reference behaviour; the tests pin both facts.

use bytes::{BufMut, Bytes, BytesMut};

/// μ-law bias added before the segment search (Sun `BIAS` = 0x84, at 14-bit scale 0x21).
const ULAW_BIAS14: i32 = 0x84 >> 2;
/// Largest 14-bit magnitude μ-law can represent before the bias (Sun `CLIP`).
const ULAW_CLIP14: i32 = 8159;
/// Segment end points of μ-law at 14-bit scale (after the bias).
const SEG_UEND: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
/// Segment end points of A-law at 13-bit scale.
const SEG_AEND: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

/// μ-law code of digital silence (`0x7F`, the negative zero, also decodes to 0).
pub const MULAW_SILENCE: u8 = 0xFF;
/// A-law code closest to silence (decodes to +8).
pub const ALAW_SILENCE: u8 = 0xD5;

const fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let mut t = (((u & 0x0F) as i32) << 3) + 0x84;
    t <<= ((u & 0x70) >> 4) as i32;
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

const fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    let seg = ((a & 0x70) >> 4) as i32;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => t = (t + 0x108) << (seg - 1),
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

const fn build_table(alaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if alaw { alaw_to_linear(i as u8) } else { ulaw_to_linear(i as u8) };
        i += 1;
    }
    table
}

/// μ-law code → linear PCM16 for every code.
pub static MULAW_DECODE: [i16; 256] = build_table(false);
/// A-law code → linear PCM16 for every code.
pub static ALAW_DECODE: [i16; 256] = build_table(true);

/// Index of the first segment end that is `>= value`, or 8 when above the last.
#[inline]
fn segment(value: i32, ends: &[i32; 8]) -> u8 {
    // A linear scan over 8 constants compiles to a short branch chain; most speech sits in the
    // low segments so it usually exits early.
    let mut seg = 0u8;
    while (seg as usize) < 8 && value > ends[seg as usize] {
        seg += 1;
    }
    seg
}

/// Encode one PCM16 sample to μ-law (bit-exact with Sun `g711.c` / sox).
#[inline]
#[must_use]
pub fn mulaw_encode(sample: i16) -> u8 {
    let mut v = i32::from(sample) >> 2;
    let mask: u8 = if v < 0 {
        v = -v;
        0x7F
    } else {
        0xFF
    };
    v = v.min(ULAW_CLIP14) + ULAW_BIAS14;
    let seg = segment(v, &SEG_UEND);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let code = (seg << 4) | ((v >> (seg + 1)) & 0x0F) as u8;
    code ^ mask
}

/// Decode one μ-law code to PCM16.
#[inline]
#[must_use]
pub fn mulaw_decode(code: u8) -> i16 {
    MULAW_DECODE[usize::from(code)]
}

/// Encode one PCM16 sample to A-law (bit-exact with Sun `g711.c` / sox).
#[inline]
#[must_use]
pub fn alaw_encode(sample: i16) -> u8 {
    let mut v = i32::from(sample) >> 3;
    let mask: u8 = if v >= 0 {
        0xD5
    } else {
        v = -v - 1;
        0x55
    };
    let seg = segment(v, &SEG_AEND);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let shift = if seg < 2 { 1 } else { seg };
    let code = (seg << 4) | ((v >> shift) & 0x0F) as u8;
    code ^ mask
}

/// Decode one A-law code to PCM16.
#[inline]
#[must_use]
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_DECODE[usize::from(code)]
}

/// Decode μ-law bytes, appending little-endian PCM16 to `out`.
pub fn decode_mulaw_into(codes: &[u8], out: &mut BytesMut) {
    decode_into(codes, &MULAW_DECODE, out);
}

/// Decode A-law bytes, appending little-endian PCM16 to `out`.
pub fn decode_alaw_into(codes: &[u8], out: &mut BytesMut) {
    decode_into(codes, &ALAW_DECODE, out);
}

fn decode_into(codes: &[u8], table: &[i16; 256], out: &mut BytesMut) {
    let start = out.len();
    // One resize and indexed stores instead of a capacity check per `put_i16_le`.
    out.resize(start + codes.len() * 2, 0);
    for (dst, &c) in out[start..].chunks_exact_mut(2).zip(codes) {
        dst.copy_from_slice(&table[usize::from(c)].to_le_bytes());
    }
}

/// Encode little-endian PCM16 bytes to μ-law, appending to `out`. A trailing odd byte is ignored
/// (callers check the length first).
pub fn encode_mulaw_into(pcm_le: &[u8], out: &mut BytesMut) {
    out.reserve(pcm_le.len() / 2);
    for pair in pcm_le.chunks_exact(2) {
        out.put_u8(mulaw_encode(i16::from_le_bytes([pair[0], pair[1]])));
    }
}

/// Encode little-endian PCM16 bytes to A-law, appending to `out`. A trailing odd byte is ignored
/// (callers check the length first).
pub fn encode_alaw_into(pcm_le: &[u8], out: &mut BytesMut) {
    out.reserve(pcm_le.len() / 2);
    for pair in pcm_le.chunks_exact(2) {
        out.put_u8(alaw_encode(i16::from_le_bytes([pair[0], pair[1]])));
    }
}

/// Encode little-endian PCM16 bytes to a new μ-law buffer (allocating form of
/// [`encode_mulaw_into`]).
#[must_use]
pub fn encode_mulaw(pcm_le: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(pcm_le.len() / 2);
    encode_mulaw_into(pcm_le, &mut out);
    out.freeze()
}

/// Decode μ-law bytes to a new little-endian PCM16 buffer (allocating form of
/// [`decode_mulaw_into`]).
#[must_use]
pub fn decode_mulaw(codes: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(codes.len() * 2);
    decode_mulaw_into(codes, &mut out);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(mulaw_decode(0x00), -32124);
        assert_eq!(mulaw_decode(0x80), 32124);
        assert_eq!(mulaw_decode(0xFF), 0);
        assert_eq!(mulaw_decode(0x7F), 0);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(mulaw_encode(0), 0xFF);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(mulaw_encode(i16::MIN), 0x00);
        assert_eq!(mulaw_encode(i16::MAX), 0x80);
    }

    #[test]
    fn every_code_round_trips_through_decode_and_encode() {
        for code in 0..=255u8 {
            let (u, a) = (mulaw_decode(code), alaw_decode(code));
            let back = mulaw_encode(u);
            // μ-law has two zeros; the negative one (0x7F) re-encodes as the positive (0xFF).
            assert!(back == code || (code == 0x7F && back == 0xFF), "μ-law {code:#04x} -> {back:#04x}");
            assert_eq!(mulaw_decode(back), u);
            assert_eq!(alaw_encode(a), code, "A-law {code:#04x}");
        }
    }

    #[test]
    fn full_scale_clips_to_the_extreme_codes() {
        // μ-law clips magnitudes from 32635 up; every louder sample is the top code.
        for s in 32_635..=i16::MAX {
            assert_eq!(mulaw_encode(s), 0x80, "{s}");
        }
        for s in i16::MIN..=-32_636 {
            assert_eq!(mulaw_encode(s), 0x00, "{s}");
        }
        assert_eq!(mulaw_decode(0x80), 32_124);
        assert_eq!(mulaw_decode(0x00), -32_124);
        // A-law's top segment saturates the same way.
        for s in 32_256..=i16::MAX {
            assert_eq!(alaw_encode(s), 0xAA, "{s}");
        }
        for s in i16::MIN..=-32_257 {
            assert_eq!(alaw_encode(s), 0x2A, "{s}");
        }
    }

    #[test]
    fn allocating_forms_match_the_buffer_helpers() {
        let pcm: Vec<u8> = [0i16, 1000, -1000, i16::MAX, i16::MIN].iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut into = BytesMut::new();
        encode_mulaw_into(&pcm, &mut into);
        assert_eq!(encode_mulaw(&pcm), into.freeze());
        let codes = encode_mulaw(&pcm);
        let mut back = BytesMut::new();
        decode_mulaw_into(&codes, &mut back);
        assert_eq!(decode_mulaw(&codes), back.freeze());
    }
}

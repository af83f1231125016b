//! G.711 μ-law helpers for the transports' edges (Twilio is μ-law; WAV files and browsers are PCM).
//!
//! Kept local and tiny (table-free, per ITU-T G.711 as in the Sun reference code) so the
//! transports do not depend on the processors' codec module's API; the processors' codec is
//! what pipelines use in their hot path.

const BIAS: i32 = 0x84;
const CLIP: i32 = 32_635;

/// Encode one linear sample.
#[must_use]
pub fn encode_sample(x: i16) -> u8 {
    let mut x = i32::from(x);
    let sign = if x < 0 {
        x = -x;
        0x80
    } else {
        0
    };
    x = x.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && x & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (x >> (exponent + 3)) & 0x0F;
    // The cast keeps the low byte, which is the encoded value by construction.
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// Decode one μ-law byte.
#[must_use]
pub fn decode_sample(u: u8) -> i16 {
    let u = !u;
    let sign = u & 0x80;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0F);
    let x = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    let x = if sign != 0 { -x } else { x };
    i16::try_from(x).unwrap_or(0)
}

/// PCM16 little-endian bytes → μ-law bytes (a trailing odd byte is ignored).
#[must_use]
pub fn pcm16_to_mulaw(pcm: &[u8]) -> Vec<u8> {
    pcm.chunks_exact(2).map(|b| encode_sample(i16::from_le_bytes([b[0], b[1]]))).collect()
}

/// μ-law bytes → PCM16 little-endian bytes.
#[must_use]
pub fn mulaw_to_pcm16(mulaw: &[u8]) -> Vec<u8> {
    mulaw.iter().flat_map(|u| decode_sample(*u).to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_codes() {
        for c in 0..=255u8 {
            let back = encode_sample(decode_sample(c));
            // μ-law's negative zero 0x7F re-encodes as positive zero 0xFF.
            assert!(back == c || (c == 0x7F && back == 0xFF), "code {c:#x} -> {back:#x}");
        }
        assert_eq!(encode_sample(0), 0xFF);
        assert_eq!(decode_sample(0xFF), 0);
    }
}

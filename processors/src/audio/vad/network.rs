//! earshot 1.2.2's network (three small convolutions and two minGRU layers), computed so that
//! LLVM vectorises it.
//!
//! Why not `earshot::DefaultPredictor`: its loops index slices inside their reductions (a bounds
//! check per multiply-add, and a float sum whose order LLVM may not change), so nothing in it is
//! vectorised. Callgrind on W4 counted ~34k instructions per 16 ms window in `predict`: 37% of the
//! per-frame front end, the largest single cost. Here every float reduction runs across outputs
//! (one output per SIMD lane, each summed in earshot's own order, so the results are
//! bit-identical) and the integer matrix-vector products of the GRU are fixed-size dot products
//! (`vpmaddwd` on x86-64). A test pins every output bit to earshot's over thousands of windows.
//!
//! The weights are earshot's own, vendored as `earshot_weights.bin` (earshot 1.2.2,
//! <https://github.com/pykeio/earshot>, MIT OR Apache-2.0, © pyke.io), sha256
//! `27d6a664…fdd19`; their layout is earshot's `default_predictor.rs`.

use std::sync::OnceLock;

/// Log-mel bands per window.
pub(super) const MELS: usize = 40;
/// Windows of features the network sees at once (oldest first).
pub(super) const CONTEXT: usize = 3;

const L1_COLS: usize = MELS - 2; // depthwise 3×3 over 3 rows: 38 columns
const L1_POOLED: usize = (L1_COLS - 3) / 2 + 1; // max pool 3, stride 2: 18
const CH: usize = 16;
const L2_COLS: usize = 9;
const L3_COLS: usize = 5;
const GRU1_IN: usize = L3_COLS * CH; // 80
const HIDDEN: usize = 64;

static RAW: &[u8] = include_bytes!("earshot_weights.bin");

/// The weights, laid out for the loops below (pointwise matrices transposed: input-major).
struct Weights {
    norm: [f32; MELS],
    l1_kernel: [f32; 9],
    l1_weight: [f32; CH],
    l1_bias: [f32; CH],
    /// `l2_kernel[kw][c]`: tap `kw` of channel `c`'s depthwise kernel.
    l2_kernel: [[f32; CH]; 3],
    /// `l2_pointwise[c][oc]` = earshot's `LAYER2_WEIGHT[oc * 16 + c]`.
    l2_pointwise: [[f32; CH]; CH],
    l2_bias: [f32; CH],
    l3_kernel: [[f32; CH]; 3],
    l3_pointwise: [[f32; CH]; CH],
    /// Row `d` of GRU 1: the candidate (`d < 64`) or gate (`d ≥ 64`) of hidden unit `d % 64`.
    gru1: Box<[[i16; GRU1_IN]; 2 * HIDDEN]>,
    gru2: Box<[[i16; HIDDEN]; 2 * HIDDEN]>,
    output: [i16; 2 * HIDDEN],
}

/// Reads earshot's weight file: f32 values first, then i16 values from f32 offset 705 on.
struct Reader {
    pos: usize,
}

impl Reader {
    fn f32s<const N: usize>(&mut self) -> [f32; N] {
        let mut out = [0.0; N];
        for v in &mut out {
            let b = &RAW[self.pos..self.pos + 4];
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            self.pos += 4;
        }
        out
    }

    fn i16s<const N: usize>(&mut self) -> [i16; N] {
        let mut out = [0; N];
        for v in &mut out {
            *v = i16::from_le_bytes([RAW[self.pos], RAW[self.pos + 1]]);
            self.pos += 2;
        }
        out
    }
}

fn weights() -> &'static Weights {
    static WEIGHTS: OnceLock<Weights> = OnceLock::new();
    WEIGHTS.get_or_init(|| {
        // The file is a compile-time constant whose size `weights_file_is_earshots` pins, so the
        // reads below cannot run past its end.
        let mut r = Reader { pos: 0 };
        let norm = r.f32s::<MELS>();
        let l1_kernel = r.f32s::<9>();
        let l1_weight = r.f32s::<CH>();
        let l1_bias = r.f32s::<CH>();
        let l2_kernel = r.f32s::<48>();
        let l2_weight = r.f32s::<256>();
        let l2_bias = r.f32s::<CH>();
        let l3_kernel = r.f32s::<48>();
        let l3_weight = r.f32s::<256>();
        let kernel = |k: &[f32; 48]| std::array::from_fn(|kw| std::array::from_fn(|c| k[c * 3 + kw]));
        let transpose = |w: &[f32; 256]| std::array::from_fn(|c| std::array::from_fn(|oc| w[oc * CH + c]));
        let mut gru1 = Box::new([[0i16; GRU1_IN]; 2 * HIDDEN]);
        for row in gru1.iter_mut() {
            *row = r.i16s::<GRU1_IN>();
        }
        let mut gru2 = Box::new([[0i16; HIDDEN]; 2 * HIDDEN]);
        for row in gru2.iter_mut() {
            *row = r.i16s::<HIDDEN>();
        }
        let output = r.i16s::<{ 2 * HIDDEN }>();
        Weights {
            norm,
            l1_kernel,
            l1_weight,
            l1_bias,
            l2_kernel: kernel(&l2_kernel),
            l2_pointwise: transpose(&l2_weight),
            l2_bias,
            l3_kernel: kernel(&l3_kernel),
            l3_pointwise: transpose(&l3_weight),
            gru1,
            gru2,
            output,
        }
    })
}

/// One stream's network state: the two GRU layers' hidden units (Q15), 256 bytes.
pub(super) struct Network {
    hidden: [[i16; HIDDEN]; 2],
}

impl Network {
    /// A fresh (zero) state.
    pub(super) const fn new() -> Self {
        Self { hidden: [[0; HIDDEN]; 2] }
    }

    /// Forget the stream.
    pub(super) fn reset(&mut self) {
        self.hidden = [[0; HIDDEN]; 2];
    }

    /// earshot's per-window normalisation of one window's log-mel features, in place.
    pub(super) fn normalize(features: &mut [f32; MELS]) {
        let w = weights();
        let i_rms = (features.iter().map(|x| x * x).sum::<f32>() / MELS as f32).sqrt().recip();
        for (v, n) in features.iter_mut().zip(&w.norm) {
            *v = n * *v * i_rms;
        }
    }

    /// Speech probability of the newest window, given three windows of normalised features.
    pub(super) fn predict(&mut self, features: &[[f32; MELS]; CONTEXT]) -> f32 {
        let w = weights();
        let l1 = layer1(w, features);
        let l2 = layer2(w, &l1);
        let l3 = layer3(w, &l2);
        let [h1, h2] = &mut self.hidden;
        min_gru(&l3, h1, &w.gru1);
        min_gru(h1, h2, &w.gru2);
        let state = self.hidden.as_flattened();
        let out = state.iter().zip(&w.output).fold(0i32, |acc, (&s, &o)| acc.wrapping_add(i32::from(s) * i32::from(o)));
        let x = out as f32 / 16_777_216.0;
        1.0 / (1.0 + (-x).exp())
    }
}

/// Depthwise 3×3 over the three windows, pointwise ×16 with bias, max pool 3/2 with ReLU.
/// Out: `[column][channel]` (channel-minor, so the next layer runs across channels).
fn layer1(w: &Weights, f: &[[f32; MELS]; CONTEXT]) -> [[f32; CH]; L1_POOLED] {
    let mut row = [0.0f32; L1_COLS];
    for (kh, window) in f.iter().enumerate() {
        for kw in 0..3 {
            let k = w.l1_kernel[kh * 3 + kw];
            let src = &window[kw..kw + L1_COLS];
            for (acc, &x) in row.iter_mut().zip(src) {
                *acc += x * k;
            }
        }
    }
    let mut out = [[0.0f32; CH]; L1_POOLED];
    for (q, o) in out.iter_mut().enumerate() {
        let [a, b, c] = [row[2 * q], row[2 * q + 1], row[2 * q + 2]];
        for ((v, &scale), &bias) in o.iter_mut().zip(&w.l1_weight).zip(&w.l1_bias) {
            // Starting from 0 is the ReLU, as in earshot.
            *v = 0.0f32.max(a * scale + bias).max(b * scale + bias).max(c * scale + bias);
        }
    }
    out
}

/// The stride-2, padding-1 depthwise 1×3 of layers 2 and 3, for output column `ox`, across
/// channels.
fn depthwise<const IN: usize>(x: &[[f32; CH]; IN], kernel: &[[f32; CH]; 3], ox: usize) -> [f32; CH] {
    let mut sum = [0.0f32; CH];
    for (kw, k) in kernel.iter().enumerate() {
        // Same terms in the same order as earshot: out-of-range taps are skipped, not zero.
        let Some(col) = (2 * ox + kw).checked_sub(1).and_then(|ix| x.get(ix)) else { continue };
        for ((s, &v), &k) in sum.iter_mut().zip(col).zip(k) {
            *s += v * k;
        }
    }
    sum
}

/// `Σ_c dw[c] · W[oc][c]` for every `oc`, one output per lane, each summed over `c` in order.
fn pointwise(dw: &[f32; CH], w: &[[f32; CH]; CH]) -> [f32; CH] {
    let mut acc = [0.0f32; CH];
    for (&d, col) in dw.iter().zip(w) {
        for (a, &wt) in acc.iter_mut().zip(col) {
            *a += d * wt;
        }
    }
    acc
}

/// Depthwise 1×3 stride 2, pointwise ×16 with bias and ReLU: 18 → 9 columns of 16 channels.
fn layer2(w: &Weights, x: &[[f32; CH]; L1_POOLED]) -> [[f32; CH]; L2_COLS] {
    let mut out = [[0.0f32; CH]; L2_COLS];
    for (ox, o) in out.iter_mut().enumerate() {
        let acc = pointwise(&depthwise(x, &w.l2_kernel, ox), &w.l2_pointwise);
        for ((v, a), b) in o.iter_mut().zip(acc).zip(&w.l2_bias) {
            *v = (a + b).max(0.0);
        }
    }
    out
}

/// Depthwise 1×3 stride 2, pointwise ×16, no bias or ReLU, quantised to Q15: 9 → 5 columns.
fn layer3(w: &Weights, x: &[[f32; CH]; L2_COLS]) -> [i16; GRU1_IN] {
    let mut out = [0i16; GRU1_IN];
    for (ox, dst) in out.chunks_exact_mut(CH).enumerate() {
        let acc = pointwise(&depthwise(x, &w.l3_kernel, ox), &w.l3_pointwise);
        for (o, a) in dst.iter_mut().zip(acc) {
            *o = (a * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
        }
    }
    out
}

/// `Σ a[i]·b[i]` of Q15 × Q9 values, wrapping as earshot's release build (integer sums in any
/// order are the same bits).
///
/// Why not inlined: inlined into the row loop, LLVM hoists the sign extension of the
/// loop-invariant input out of it and then re-packs it to i16 for every row (~60 instructions
/// per row of 80); called per row, the body is plain `vpmaddwd` on both operands.
#[inline(never)]
fn dot<const N: usize>(a: &[i16; N], b: &[i16; N]) -> i32 {
    a.iter().zip(b).fold(0i32, |acc, (&a, &b)| acc.wrapping_add(i32::from(a).wrapping_mul(i32::from(b))))
}

/// earshot's minGRU in fixed point: `h ← (1 − g)·h + g·c`, with the candidate `c` and the gate
/// `g` (×4, clamped to [0, 1]) linear in the input. Inputs Q15, weights Q9.
fn min_gru<const IN: usize>(x: &[i16; IN], h: &mut [i16; HIDDEN], w: &[[i16; IN]; 2 * HIDDEN]) {
    let mut pre = [0i32; 2 * HIDDEN];
    for (p, row) in pre.iter_mut().zip(w.iter()) {
        *p = dot(row, x);
    }
    let (candidate, gate) = pre.split_at(HIDDEN);
    for ((h, &c), &g) in h.iter_mut().zip(candidate).zip(gate) {
        const ONE: i64 = 16_777_215; // 1.0 in Q24
        let g = i64::from((g << 2).clamp(0, ONE as i32));
        let y = (ONE - g) * (i64::from(*h) << 9) + g * i64::from(c);
        *h = (y >> 33).clamp(-32768, 32767) as i16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use earshot::{DefaultPredictor, Predictor};

    #[test]
    fn weights_file_is_earshots() {
        // 705 f32 + 18,560 i16 weights, as laid out in earshot 1.2.2.
        assert_eq!(RAW.len(), 705 * 4 + (10_240 + 8_192 + 128) * 2);
    }

    /// Log-mel-like features: a slow random walk per band plus per-window noise, with stretches
    /// of near-silence and loud bursts, so every layer's ReLU and the GRU's clamps are exercised.
    fn features(n: usize) -> Vec<[f32; MELS]> {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f32 / (1u64 << 53) as f32
        };
        let mut level = [-20.0f32; MELS];
        (0..n)
            .map(|i| {
                let loud = if (i / 40) % 3 == 0 { -25.0 } else { 0.0 };
                std::array::from_fn(|b| {
                    level[b] = (level[b] + (rnd() - 0.5) * 2.0).clamp(-40.0, 5.0);
                    level[b] + loud + (rnd() - 0.5) * 3.0
                })
            })
            .collect()
    }

    #[test]
    fn bit_identical_to_earshot() {
        let mut ours = Network::new();
        let mut theirs = DefaultPredictor::new();
        let mut work = vec![0.0f32; 1026];
        let mut ctx_a = [[0.0f32; MELS]; CONTEXT];
        let mut ctx_b = [0.0f32; MELS * CONTEXT];
        let (mut lo, mut hi) = (1.0f32, 0.0f32);
        for (i, window) in features(3000).into_iter().enumerate() {
            let (mut a, mut b) = (window, window);
            Network::normalize(&mut a);
            theirs.normalize(&mut b);
            assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits), "normalisation differs at window {i}");
            ctx_a.rotate_left(1);
            ctx_a[CONTEXT - 1] = a;
            ctx_b.copy_within(MELS.., 0);
            ctx_b[MELS * 2..].copy_from_slice(&b);
            let (pa, pb) = (ours.predict(&ctx_a), theirs.predict(&ctx_b, &mut work));
            assert_eq!(pa.to_bits(), pb.to_bits(), "window {i}: {pa} vs earshot {pb}");
            (lo, hi) = (lo.min(pa), hi.max(pa));
            if i == 1500 {
                ours.reset();
                theirs.reset();
            }
        }
        // The comparison only means something if the scores moved across the range.
        assert!(lo < 0.1 && hi > 0.8, "scores stayed within {lo}..{hi}");
    }
}

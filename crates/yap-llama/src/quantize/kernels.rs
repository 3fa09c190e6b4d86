//! Row quantizers: ports of ggml's reference quantizers (`quantize_row_*_ref` in
//! `ggml-quants.c`), the code path llama.cpp's quantizer runs when no importance matrix is
//! given. Same operations in the same order in f32, so the output is byte-identical to
//! `llama-quantize` (checked by `scripts/check-quantize.sh`).
//!
//! Invariant: every function takes a whole number of blocks of `x` and writes exactly
//! `x.len() / block * block_bytes` bytes to `out`.

use half::f16;

const QK_K: usize = 256;
const GROUP_MAX_EPS: f32 = 1e-15;

fn fp16(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

fn fp16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// ggml's `nearest_int`: round half to even through the float mantissa.
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// `quantize_row_q8_0_ref`.
pub fn q8_0(x: &[f32], out: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb[..2].copy_from_slice(&fp16(d));
        for (q, v) in yb[2..].iter_mut().zip(xb) {
            *q = (v * id).round() as i8 as u8;
        }
    }
}

/// `quantize_row_q5_0_ref`.
pub fn q5_0(x: &[f32], out: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(32).zip(out.chunks_exact_mut(22)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb[..2].copy_from_slice(&fp16(d));
        let mut qh = 0u32;
        for j in 0..16 {
            let xi0 = ((xb[j] * id + 16.5) as i8).min(31) as u8;
            let xi1 = ((xb[16 + j] * id + 16.5) as i8).min(31) as u8;
            yb[6 + j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= u32::from((xi0 & 0x10) >> 4) << j;
            qh |= u32::from((xi1 & 0x10) >> 4) << (j + 16);
        }
        yb[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

/// `quantize_row_q5_1_ref`.
pub fn q5_1(x: &[f32], out: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(32).zip(out.chunks_exact_mut(24)) {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in xb {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb[..2].copy_from_slice(&fp16(d));
        yb[2..4].copy_from_slice(&fp16(min));
        let mut qh = 0u32;
        for j in 0..16 {
            let xi0 = ((xb[j] - min) * id + 0.5) as u8;
            let xi1 = ((xb[16 + j] - min) * id + 0.5) as u8;
            yb[8 + j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= u32::from((xi0 & 0x10) >> 4) << j;
            qh |= u32::from((xi1 & 0x10) >> 4) << (j + 16);
        }
        yb[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

/// Settings of `make_qkx2_quants` for one k-quant type.
struct Qkx2 {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
}

/// `make_qkx2_quants` (use_mad = false): the scale and the negated min of a 32-value group.
fn make_qkx2_quants(p: &Qkx2, x: &[f32], weights: &[f32], l_out: &mut [u8]) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let nmax = p.nmax;
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let diff = scale * f32::from(l_out[i]) + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut laux = [0u8; 32];
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `get_scale_min_k4`.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The shared part of q4_K and q5_K: per-group scales/mins packed into 6 bits, the super-block
/// `d`/`dmin` (written to `head[0..4]`, scales to `head[4..16]`), and the final levels `l`.
fn k_scales(p: &Qkx2, x: &[f32], head: &mut [u8], l: &mut [u8; QK_K]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    let mut weights = [0f32; 32];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(p, xs, &weights, &mut l[32 * j..32 * j + 32]);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut head[4..16];
    sc.fill(0);
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    head[..2].copy_from_slice(&fp16(max_scale / 63.0));
    head[2..4].copy_from_slice(&fp16(max_min / 63.0));
    let d_all = fp16_round(max_scale / 63.0);
    let dmin_all = fp16_round(max_min / 63.0);
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, &head[4..16]);
        let d = d_all * f32::from(s);
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(m);
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / d);
            l[32 * j + ii] = q.clamp(0, p.nmax) as u8;
        }
    }
}

/// `quantize_row_q4_K_ref`.
pub fn q4_k(x: &[f32], out: &mut [u8]) {
    let p = Qkx2 {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
    };
    for (xb, yb) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(144)) {
        let mut l = [0u8; QK_K];
        k_scales(&p, xb, &mut yb[..16], &mut l);
        let q = &mut yb[16..];
        for (c, j) in (0..QK_K).step_by(64).enumerate() {
            for i in 0..32 {
                q[32 * c + i] = l[j + i] | (l[j + i + 32] << 4);
            }
        }
    }
}

/// `quantize_row_q5_K_ref`.
pub fn q5_k(x: &[f32], out: &mut [u8]) {
    let p = Qkx2 {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
    };
    for (xb, yb) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(176)) {
        let mut l = [0u8; QK_K];
        k_scales(&p, xb, &mut yb[..16], &mut l);
        let (qh, ql) = yb[16..].split_at_mut(32);
        qh.fill(0);
        let (mut m1, mut m2) = (1u8, 2u8);
        for (c, n) in (0..QK_K).step_by(64).enumerate() {
            for j in 0..32 {
                let mut l1 = l[n + j];
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                let mut l2 = l[n + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[32 * c + j] = l1 | (l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }
}

/// `make_qx_quants` with `rmse_type = 1` and no weights (the q6_K reference path).
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (o, &v) in l_out.iter_mut().zip(x) {
        let l = level(iscale, v);
        *o = (l + nmax) as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = level(iscale, v);
            let w = v * v;
            sumlx += w * v * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l_out.iter_mut().zip(x) {
                *o = (nmax + level(iscale, v)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `quantize_row_q6_K_ref`.
pub fn q6_k(x: &[f32], out: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(210)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..16 {
            let scale = make_qx_quants(
                32,
                &xb[16 * ib..16 * ib + 16],
                &mut l[16 * ib..16 * ib + 16],
            );
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        yb.fill(0);
        if max_abs_scale < GROUP_MAX_EPS {
            continue;
        }
        let iscale = -128.0 / max_scale;
        yb[208..210].copy_from_slice(&fp16(1.0 / iscale));
        let d_all = fp16_round(1.0 / iscale);
        let mut sc = [0i8; 16];
        for ib in 0..16 {
            sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
            yb[192 + ib] = sc[ib] as u8;
        }
        for j in 0..16 {
            let d = d_all * f32::from(sc[j]);
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(xb[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        let (ql, rest) = yb.split_at_mut(128);
        let qh = &mut rest[..64];
        let lu = |i: usize| l[i] as u8;
        for (c, j) in (0..QK_K).step_by(128).enumerate() {
            for i in 0..32 {
                let (q1, q2, q3, q4) = (
                    lu(j + i) & 0xf,
                    lu(j + i + 32) & 0xf,
                    lu(j + i + 64) & 0xf,
                    lu(j + i + 96) & 0xf,
                );
                ql[64 * c + i] = q1 | (q3 << 4);
                ql[64 * c + i + 32] = q2 | (q4 << 4);
                qh[32 * c + i] = (lu(j + i) >> 4)
                    | ((lu(j + i + 32) >> 4) << 2)
                    | ((lu(j + i + 64) >> 4) << 4)
                    | ((lu(j + i + 96) >> 4) << 6);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32))
            .collect()
    }

    fn dequant_q8_0(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(34)
            .flat_map(|blk| {
                let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                blk[2..].iter().map(move |&q| d * f32::from(q as i8))
            })
            .collect()
    }

    fn dequant_q4_k(b: &[u8]) -> Vec<f32> {
        let mut y = Vec::new();
        for blk in b.chunks_exact(144) {
            let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            let dmin = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
            let q = &blk[16..];
            for c in 0..4 {
                let (s1, m1) = scale_min_k4(2 * c, &blk[4..16]);
                let (s2, m2) = scale_min_k4(2 * c + 1, &blk[4..16]);
                for l in 0..32 {
                    y.push(
                        d * f32::from(s1) * f32::from(q[32 * c + l] & 0xf) - dmin * f32::from(m1),
                    );
                }
                for l in 0..32 {
                    y.push(
                        d * f32::from(s2) * f32::from(q[32 * c + l] >> 4) - dmin * f32::from(m2),
                    );
                }
            }
        }
        y
    }

    fn rmse(a: &[f32], b: &[f32]) -> f32 {
        let s: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        (s / a.len() as f32).sqrt()
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(0.49), 0);
    }

    #[test]
    fn q8_0_and_q4_k_reconstruct() {
        let x = data(1024);
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mut b8 = vec![0u8; 1024 / 32 * 34];
        q8_0(&x, &mut b8);
        assert!(rmse(&x, &dequant_q8_0(&b8)) < scale * 0.01);
        let mut b4 = vec![0u8; 1024 / 256 * 144];
        q4_k(&x, &mut b4);
        let e4 = rmse(&x, &dequant_q4_k(&b4));
        assert!(e4 < scale * 0.08, "q4_K rmse {e4}");
        assert!(e4 > rmse(&x, &dequant_q8_0(&b8)));
    }

    #[test]
    fn zero_blocks_stay_zero() {
        let x = vec![0f32; 256];
        for (f, bytes) in [
            (q4_k as fn(&[f32], &mut [u8]), 144),
            (q5_k, 176),
            (q6_k, 210),
            (q8_0, 8 * 34),
            (q5_1, 8 * 24),
        ] {
            let mut out = vec![0xffu8; bytes];
            f(&x, &mut out);
            assert!(out.iter().all(|&b| b == 0), "{bytes}");
        }
    }
}

//! The plan's steps that are not convolutions, on NHWC activations: the 3x3/2 max-pool, the
//! global mean that pools the features, and the input's NCHW -> NHWC layout, each split across
//! the plan's threads where it pays.

use super::exec::View;
use super::pool::for_each_item;

/// Output size of a 3x3 stride-2 unpadded max-pool.
pub fn pool_output_size(h: usize, w: usize) -> Option<(usize, usize)> {
    if h < 3 || w < 3 {
        None
    } else {
        Some(((h - 3) / 2 + 1, (w - 3) / 2 + 1))
    }
}

/// 3x3 stride-2 max-pool without padding, channel by channel.
///
/// # Safety
/// As [`super::exec::conv`]: valid, non-overlapping views; `dst` is the pooled size with
/// `src.channels`.
pub unsafe fn max_pool_3s2(src: View, dst: View, threads: usize) {
    let lines = dst.n * dst.h;
    let per_item = lines.div_ceil(4 * threads.max(1)).max(1);
    #[cfg(target_arch = "x86_64")]
    let wide = std::arch::is_x86_feature_detected!("avx512f");
    for_each_item(lines.div_ceil(per_item), threads, |item| {
        for line in item * per_item..((item + 1) * per_item).min(lines) {
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: AVX-512 F is present (checked above).
                pool_line_avx512(src, dst, line);
                continue;
            }
            pool_line(src, dst, line);
        }
    });
}

/// Channels a pooled pixel is taken in at a time: one 512-bit register (two 256-bit ones), so
/// the nine taps' maximum builds in registers and is stored once.
const POOL_LANES: usize = 16;

/// [`pool_line`] compiled for AVX-512 (the same code, wider registers).
///
/// # Safety
/// As [`pool_line`]; the CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pool_line_avx512(src: View, dst: View, line: usize) {
    pool_line(src, dst, line)
}

/// One output line of [`max_pool_3s2`]: per pixel, the maximum of its nine taps, `POOL_LANES`
/// channels at a time, then the remaining channels one by one.
///
/// # Safety
/// As [`max_pool_3s2`]; `line < dst.n * dst.h`.
#[inline(always)]
unsafe fn pool_line(src: View, dst: View, line: usize) {
    let c = src.channels;
    let (img, oy) = (line / dst.h, line % dst.h);
    for ox in 0..dst.w {
        let out = dst.at(((img * dst.h + oy) * dst.w + ox) * dst.ld);
        let mut taps = [std::ptr::null::<f32>(); 9];
        for (t, tap) in taps.iter_mut().enumerate() {
            let pix = (img * src.h + 2 * oy + t / 3) * src.w + 2 * ox + t % 3;
            *tap = src.at(pix * src.ld) as *const f32;
        }
        let mut ch = 0;
        while ch + POOL_LANES <= c {
            let mut m: [f32; POOL_LANES] = std::ptr::read_unaligned(taps[0].add(ch).cast());
            for tap in &taps[1..] {
                let v: [f32; POOL_LANES] = std::ptr::read_unaligned(tap.add(ch).cast());
                for (m, v) in m.iter_mut().zip(v) {
                    // A compare and select is one `maxps`; `f32::max`'s NaN rule costs two
                    // more instructions per vector (activations are finite here).
                    *m = if v > *m { v } else { *m };
                }
            }
            std::ptr::write_unaligned(out.add(ch).cast(), m);
            ch += POOL_LANES;
        }
        for ch in ch..c {
            let mut m = *taps[0].add(ch);
            for tap in &taps[1..] {
                let v = *tap.add(ch);
                m = if v > m { v } else { m };
            }
            *out.add(ch) = m;
        }
    }
}

/// Mean over each image's pixels into `out` (`n` x `channels`).
///
/// # Safety
/// `src` is a valid view; `out` holds `src.n * src.channels` floats.
pub unsafe fn global_mean(src: View, out: &mut [f32]) {
    let c = src.channels;
    let hw = src.h * src.w;
    for (img, dst) in out.chunks_exact_mut(c).enumerate().take(src.n) {
        dst.fill(0.0);
        for p in 0..hw {
            let row = std::slice::from_raw_parts(src.at((img * hw + p) * src.ld), c);
            for (d, &v) in dst.iter_mut().zip(row) {
                *d += v;
            }
        }
        let inv = 1.0 / hw as f32;
        dst.iter_mut().for_each(|d| *d *= inv);
    }
}

/// Pixels per work item of [`nchw_to_nhwc`] (a few tens of KB of each plane).
const LAYOUT_ITEM_PIXELS: usize = 16 * 1024;

/// NCHW `input` into the NHWC view `dst` (same n, c, h, w), split across `threads`.
///
/// # Safety
/// `dst` is a valid view with `dst.channels` = c; `input` holds n*c*h*w floats.
pub unsafe fn nchw_to_nhwc(input: &[f32], dst: View, threads: usize) {
    let (c, hw) = (dst.channels, dst.h * dst.w);
    let per_image = hw.div_ceil(LAYOUT_ITEM_PIXELS).max(1);
    for_each_item(dst.n * per_image, threads, |item| {
        let (img, part) = (item / per_image, item % per_image);
        let (p0, p1) = (
            part * LAYOUT_ITEM_PIXELS,
            ((part + 1) * LAYOUT_ITEM_PIXELS).min(hw),
        );
        let frame = &input[img * c * hw..(img + 1) * c * hw];
        for ch in 0..c {
            let plane = &frame[ch * hw + p0..ch * hw + p1];
            let mut to = dst.at((img * hw + p0) * dst.ld + ch);
            for &v in plane {
                *to = v;
                to = to.add(dst.ld);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The max-pool against the 3x3 window's maximum taken directly: few and many channels,
    /// slices of wider buffers, odd and even sizes, 1-3 threads.
    #[test]
    fn max_pool_matches_the_window_maximum() {
        let mut seed = 7u64;
        for &(n, h, w, c, ld) in &[
            (1, 7, 9, 3, 3),
            (2, 9, 8, 64, 64),
            (1, 11, 11, 70, 96),
            (1, 17, 17, 130, 130),
            (1, 3, 3, 1, 1),
        ] {
            let mut input: Vec<f32> = (0..n * h * w * ld)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            let (oh, ow) = pool_output_size(h, w).unwrap_or((0, 0));
            for threads in 1..4 {
                let mut out = vec![f32::NAN; n * oh * ow * ld];
                let v = |ptr: *mut f32, h, w| View {
                    ptr,
                    ld,
                    channels: c,
                    n,
                    h,
                    w,
                };
                // SAFETY: both views cover exactly their vectors.
                unsafe {
                    max_pool_3s2(
                        v(input.as_mut_ptr(), h, w),
                        v(out.as_mut_ptr(), oh, ow),
                        threads,
                    )
                };
                for img in 0..n {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            for ch in 0..c {
                                let mut m = f32::MIN;
                                for ky in 0..3 {
                                    for kx in 0..3 {
                                        let p = (img * h + 2 * oy + ky) * w + 2 * ox + kx;
                                        m = m.max(input[p * ld + ch]);
                                    }
                                }
                                let got = out[((img * oh + oy) * ow + ox) * ld + ch];
                                assert_eq!(got, m, "{n}x{h}x{w}x{c} threads {threads}");
                            }
                        }
                    }
                }
            }
        }
    }
}

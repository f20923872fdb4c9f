//! Turns the loaded network into the plan's steps. Each block gets one working buffer laid out so
//! that the up-projection reads its concatenated branches as one contiguous channel range:
//! Block35 `[b1 entry | b0 | b2 | b1]`, factorised blocks `[b1 entry | b0 | b1]`; the entry
//! convolution's output columns and the up-projection's input rows are permuted to match (data
//! layout only, the arithmetic is unchanged). Reductions write their branches and the max-pool
//! straight into channel slices of the next stage's buffer.

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use super::exec::PreparedConv;
use super::gemm::{Epilogue, MicroKernel, PackedWeights};
use super::qgemm::{ActQuant, QuantWeights};
use super::winograd::WinogradConv;
use super::{BufferSpec, CpuPlan, Op, Slot, Step};
use crate::model::conv::FoldedConv;
use crate::model::network::InceptionResnetV1;

/// How a convolution is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Algorithm {
    /// Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions, direct for the rest.
    Auto,
    /// im2col (or in place for 1x1) and GEMM.
    Direct,
    /// Winograd with output tiles of this side (2 or 4) where the shape is 3x3 stride 1.
    Winograd(usize),
}

/// A convolution's int8 form, in the convolution's natural layout: weights OIHW (folded, 7-bit
/// symmetric per output channel), one scale per output channel, and the per-tensor quantisation
/// of its input.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvQuant {
    pub weights: Vec<i8>,
    pub scales: Vec<f32>,
    pub act: ActQuant,
}

impl ConvQuant {
    /// Quantises a folded convolution's weights per output channel, for input quantisation `act`.
    pub fn from_folded(conv: &FoldedConv, act: ActQuant) -> candle_core::Result<Self> {
        let (cout, cin, kh, kw) = conv.weight.dims4()?;
        let k = cin * kh * kw;
        let w = conv
            .weight
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (q, scales) = super::qgemm::quantize_weights(k, cout, |row, col| w[col * k + row]);
        Ok(Self {
            weights: q,
            scales,
            act,
        })
    }
}

/// A convolution of the plan, in plan order, for tools that quantise or inspect the plan.
#[derive(Debug, Clone)]
pub struct PlanConv {
    /// The step label, e.g. `block35 entry 1x1 s1 256->96`.
    pub label: String,
    pub conv: FoldedConv,
}

/// Packs a folded convolution. `in_order[i]` is the original input channel read from position `i`
/// of the source slot, `out_order[j]` the original output channel written to column `j`.
pub(super) fn prepare(
    conv: &FoldedConv,
    in_order: Option<&[usize]>,
    out_order: Option<&[usize]>,
    algorithm: Algorithm,
) -> candle_core::Result<PreparedConv> {
    prepare_quant(conv, in_order, out_order, algorithm, None)
}

/// [`prepare`], in int8 when `quant` is given (then never Winograd).
pub(super) fn prepare_quant(
    conv: &FoldedConv,
    in_order: Option<&[usize]>,
    out_order: Option<&[usize]>,
    algorithm: Algorithm,
    quant: Option<&ConvQuant>,
) -> candle_core::Result<PreparedConv> {
    let (cout, cin, kh, kw) = conv.weight.dims4()?;
    let w = conv
        .weight
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let bias = conv
        .bias
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    let ident_in: Vec<usize> = (0..cin).collect();
    let ident_out: Vec<usize> = (0..cout).collect();
    let in_order = in_order.unwrap_or(&ident_in);
    let out_order = out_order.unwrap_or(&ident_out);
    if in_order.len() != cin || out_order.len() != cout {
        candle_core::bail!("cpu plan: channel order does not match the {cout}x{cin} weight");
    }
    let bias: Vec<f32> = out_order.iter().map(|&o| bias[o]).collect();
    if let Some(q) = quant {
        let k = kh * kw * cin;
        if q.weights.len() != k * cout || q.scales.len() != cout {
            candle_core::bail!(
                "cpu plan: int8 weights of {} values and {} scales for a {cout}x{cin}x{kh}x{kw} convolution",
                q.weights.len(),
                q.scales.len()
            );
        }
        let scales: Vec<f32> = out_order.iter().map(|&o| q.scales[o]).collect();
        let packed = QuantWeights::pack(
            k,
            cout,
            |row, col| {
                let (tap, c) = (row / cin, row % cin);
                let (ky, kx) = (tap / kw, tap % kw);
                q.weights[((out_order[col] * cin + in_order[c]) * kh + ky) * kw + kx]
            },
            &scales,
            &bias,
            q.act,
        )
        .map_err(|e| candle_core::Error::Msg(format!("cpu plan: int8 weights: {e}")))?;
        return Ok(PreparedConv {
            cin,
            kh,
            kw,
            geometry: conv.geometry,
            weights: PackedWeights::shape_only(k, cout),
            winograd: None,
            int8: Some(packed),
        });
    }
    let weights = PackedWeights::pack(
        kh * kw * cin,
        cout,
        |row, col| {
            let (tap, c) = (row / cin, row % cin);
            let (ky, kx) = (tap / kw, tap % kw);
            w[((out_order[col] * cin + in_order[c]) * kh + ky) * kw + kx]
        },
        &bias,
    );
    let g = conv.geometry;
    let tile = match algorithm {
        Algorithm::Auto => Some(2),
        Algorithm::Direct => None,
        Algorithm::Winograd(m) => Some(m),
    };
    let winograd = match tile {
        Some(m) if kh == 3 && kw == 3 && g.stride == 1 => {
            // In the permuted channel orders, like the packed weights.
            let mut wp = vec![0f32; cout * cin * 9];
            for (col, &o) in out_order.iter().enumerate() {
                for (c, &i) in in_order.iter().enumerate() {
                    let from = (o * cin + i) * 9;
                    wp[(col * cin + c) * 9..(col * cin + c + 1) * 9]
                        .copy_from_slice(&w[from..from + 9]);
                }
            }
            Some(WinogradConv::new(
                &wp,
                &bias,
                cout,
                cin,
                (g.pad_h, g.pad_w),
                m,
            ))
        }
        _ => None,
    };
    Ok(PreparedConv {
        cin,
        kh,
        kw,
        geometry: conv.geometry,
        weights,
        winograd,
        int8: None,
    })
}

fn range(a: usize, b: usize) -> impl Iterator<Item = usize> {
    a..b
}

/// Collects buffers, convolutions and steps while walking the network.
struct Builder<'q> {
    /// Per plan convolution (index into `convs`): its int8 form, or None to stay f32.
    quant: Option<&'q [Option<ConvQuant>]>,
    /// Every convolution as loaded, in plan order (cheap: tensors are shared).
    folded: Vec<PlanConv>,
    algorithm: Algorithm,
    convs: Vec<PreparedConv>,
    buffers: Vec<BufferSpec>,
    steps: Vec<Step>,
}

impl Builder<'_> {
    fn buffer(&mut self, channels: usize) -> usize {
        self.buffers.push(BufferSpec { channels });
        self.buffers.len() - 1
    }

    fn whole(&self, buf: usize) -> Slot {
        Slot {
            buf,
            offset: 0,
            channels: self.buffers[buf].channels,
        }
    }

    fn slice(buf: usize, offset: usize, channels: usize) -> Slot {
        Slot {
            buf,
            offset,
            channels,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        label: &str,
        conv: &FoldedConv,
        in_order: Option<&[usize]>,
        out_order: Option<&[usize]>,
        src: Slot,
        dst: Slot,
        epilogue: Epilogue,
    ) -> candle_core::Result<()> {
        let quant = match self.quant {
            Some(table) => table.get(self.convs.len()).and_then(|q| q.as_ref()),
            None => None,
        };
        let prepared = prepare_quant(conv, in_order, out_order, self.algorithm, quant)?;
        if prepared.cin != src.channels || prepared.cout() != dst.channels {
            candle_core::bail!(
                "cpu plan {label}: {}->{} convolution between slots of {} and {} channels",
                prepared.cin,
                prepared.cout(),
                src.channels,
                dst.channels
            );
        }
        let g = conv.geometry;
        let label = format!(
            "{label} {}x{} s{} {}->{}{}",
            prepared.kh,
            prepared.kw,
            g.stride,
            prepared.cin,
            prepared.cout(),
            if epilogue.accumulate { " +res" } else { "" }
        );
        self.folded.push(PlanConv {
            label: label.clone(),
            conv: conv.clone(),
        });
        self.convs.push(prepared);
        self.steps.push(Step {
            op: Op::Conv {
                conv: self.convs.len() - 1,
                src,
                dst,
                epilogue,
            },
            label,
        });
        Ok(())
    }

    /// A convolution with ReLU and its natural channel orders.
    fn plain(
        &mut self,
        label: &str,
        conv: &FoldedConv,
        src: Slot,
        dst: Slot,
    ) -> candle_core::Result<()> {
        self.conv(label, conv, None, None, src, dst, RELU)
    }

    fn max_pool(&mut self, label: &str, src: Slot, dst: Slot) {
        self.steps.push(Step {
            op: Op::MaxPool { src, dst },
            label: format!("{label} maxpool 3x3 s2 {}", src.channels),
        });
    }
}

const RELU: Epilogue = Epilogue {
    accumulate: false,
    relu: true,
};

impl CpuPlan {
    /// The plan of `net` (f32 weights on the CPU), split across `threads` threads per layer.
    pub fn build(net: &InceptionResnetV1, threads: usize) -> candle_core::Result<Self> {
        Ok(Self::build_inner(net, threads, None)?.0)
    }

    /// The plan of `net` with the convolutions `quant` gives (by plan index, see
    /// [`CpuPlan::convolutions`]) in int8; the rest, and always the stem, in f32.
    pub fn build_int8(
        net: &InceptionResnetV1,
        threads: usize,
        quant: &[Option<ConvQuant>],
    ) -> candle_core::Result<Self> {
        let (plan, convs) = Self::build_inner(net, threads, Some(quant))?;
        if quant.len() != convs.len() {
            candle_core::bail!(
                "cpu plan: int8 table has {} convolutions, the network's plan has {}",
                quant.len(),
                convs.len()
            );
        }
        if quant.first().is_some_and(|q| q.is_some())
            || (plan.stem_grey.is_some() && quant.get(1).is_some_and(|q| q.is_some()))
        {
            candle_core::bail!(
                "cpu plan: the stem stays f32 (its input is signed, normalised pixels)"
            );
        }
        Ok(plan)
    }

    /// Every convolution of the plan of `net`, in plan order (index 0 the stem, then the grey
    /// stem if any): what [`CpuPlan::build_int8`]'s table is indexed by.
    pub fn convolutions(net: &InceptionResnetV1) -> candle_core::Result<Vec<PlanConv>> {
        Ok(Self::build_inner(net, 1, None)?.1)
    }

    fn build_inner(
        net: &InceptionResnetV1,
        threads: usize,
        quant: Option<&[Option<ConvQuant>]>,
    ) -> candle_core::Result<(Self, Vec<PlanConv>)> {
        let c = net.channels;
        let mut b = Builder {
            quant,
            folded: Vec::new(),
            algorithm: Algorithm::Direct,
            convs: Vec::new(),
            buffers: Vec::new(),
            steps: Vec::new(),
        };
        let stem_channels = net.input_channels;
        let input = b.buffer(stem_channels);
        let stem_label = format!("conv2d_1a 3x3 s2 {stem_channels}->{}", c.c1a);
        let stem_rgb = {
            b.convs
                .push(prepare(&net.conv2d_1a, None, None, Algorithm::Direct)?);
            b.folded.push(PlanConv {
                label: stem_label.clone(),
                conv: net.conv2d_1a.clone(),
            });
            b.convs.len() - 1
        };
        let stem_grey = match &net.conv2d_1a_grey {
            Some(g) => {
                b.convs.push(prepare(g, None, None, Algorithm::Direct)?);
                b.folded.push(PlanConv {
                    label: format!("conv2d_1a grey 3x3 s2 1->{}", c.c1a),
                    conv: g.clone(),
                });
                Some(b.convs.len() - 1)
            }
            None => None,
        };
        let s1 = b.buffer(c.c1a);
        b.steps.push(Step {
            op: Op::Stem {
                src: b.whole(input),
                dst: b.whole(s1),
            },
            label: stem_label,
        });
        let s2 = b.buffer(c.c2a);
        b.plain("conv2d_2a", &net.conv2d_2a, b.whole(s1), b.whole(s2))?;
        // Winograd where it pays (thread CPU time per step, `echonet bench --threads 1
        // --profile`): F(4x4) on conv2d_2b, conv2d_4a and mixed_6a's 35x35 3x3 (1.2x, 2.0x, 1.8x
        // faster than direct); F(2x2) at 17x17, where 4x4 tiles would pad the output to 20x20;
        // direct for the 32-channel 3x3s (conv2d_2a, Block35), whose transforms cost about what
        // their GEMMs save.
        b.algorithm = Algorithm::Winograd(4);
        let s3 = b.buffer(c.c2b);
        b.plain("conv2d_2b", &net.conv2d_2b, b.whole(s2), b.whole(s3))?;
        let s4 = b.buffer(c.c2b);
        b.max_pool("maxpool_3a", b.whole(s3), b.whole(s4));
        let s5 = b.buffer(c.c3b);
        b.plain("conv2d_3b", &net.conv2d_3b, b.whole(s4), b.whole(s5))?;
        let s6 = b.buffer(c.c4a);
        b.plain("conv2d_4a", &net.conv2d_4a, b.whole(s5), b.whole(s6))?;
        b.algorithm = Algorithm::Direct;
        let x35 = b.buffer(c.c4b);
        b.plain("conv2d_4b", &net.conv2d_4b, b.whole(s6), b.whole(x35))?;

        // Block35: work buffer [b1 entry | b0 | b2 | b1], each `w` channels.
        let w = c.b35;
        let work35 = b.buffer(4 * w);
        let tmp35 = b.buffer(w);
        let entry_out: Vec<usize> = range(w, 2 * w).chain(0..w).chain(2 * w..3 * w).collect();
        let up_in: Vec<usize> = range(0, w).chain(2 * w..3 * w).chain(w..2 * w).collect();
        for blk in &net.repeat_1 {
            let p = "block35";
            let x = b.whole(x35);
            b.conv(
                &format!("{p} entry"),
                &blk.entry,
                None,
                Some(&entry_out),
                x,
                Builder::slice(work35, 0, 3 * w),
                RELU,
            )?;
            b.plain(
                &format!("{p} b1"),
                &blk.branch1_1,
                Builder::slice(work35, 0, w),
                Builder::slice(work35, 3 * w, w),
            )?;
            b.plain(
                &format!("{p} b2.1"),
                &blk.branch2_1,
                Builder::slice(work35, 2 * w, w),
                b.whole(tmp35),
            )?;
            b.plain(
                &format!("{p} b2.2"),
                &blk.branch2_2,
                b.whole(tmp35),
                Builder::slice(work35, 2 * w, w),
            )?;
            b.conv(
                &format!("{p} up"),
                &blk.up,
                Some(&up_in),
                None,
                Builder::slice(work35, w, 3 * w),
                x,
                Epilogue {
                    accumulate: true,
                    relu: true,
                },
            )?;
        }

        // mixed_6a into the 17x17 stream [b0 | b1 | pool].
        let x17 = b.buffer(c.c6);
        let m6 = &net.mixed_6a;
        b.plain(
            "mixed_6a b0",
            &m6.branch0,
            b.whole(x35),
            Builder::slice(x17, 0, c.m6a_b0),
        )?;
        let t6a = b.buffer(c.m6a_b1_mid);
        let t6b = b.buffer(c.m6a_b1_mid);
        b.plain("mixed_6a b1.0", &m6.branch1_0, b.whole(x35), b.whole(t6a))?;
        b.algorithm = Algorithm::Winograd(4);
        b.plain("mixed_6a b1.1", &m6.branch1_1, b.whole(t6a), b.whole(t6b))?;
        b.algorithm = Algorithm::Direct;
        b.plain(
            "mixed_6a b1.2",
            &m6.branch1_2,
            b.whole(t6b),
            Builder::slice(x17, c.m6a_b0, c.m6a_b1_out),
        )?;
        b.max_pool(
            "mixed_6a",
            b.whole(x35),
            Builder::slice(x17, c.m6a_b0 + c.m6a_b1_out, c.c4b),
        );

        factorised(&mut b, "block17", &net.repeat_2, x17)?;

        // mixed_7a into the 8x8 stream [b0 | b1 | b2 | pool].
        let x8 = b.buffer(c.c7);
        let m7 = &net.mixed_7a;
        let m = m7.mid;
        let e7 = b.buffer(3 * m);
        let t7 = b.buffer(m);
        b.plain("mixed_7a entry", &m7.entry, b.whole(x17), b.whole(e7))?;
        b.plain(
            "mixed_7a b0",
            &m7.branch0_1,
            Builder::slice(e7, 0, m),
            Builder::slice(x8, 0, c.m7a_b0_out),
        )?;
        b.plain(
            "mixed_7a b1",
            &m7.branch1_1,
            Builder::slice(e7, m, m),
            Builder::slice(x8, c.m7a_b0_out, c.m7a_b1_out),
        )?;
        b.algorithm = Algorithm::Winograd(2);
        b.plain(
            "mixed_7a b2.1",
            &m7.branch2_1,
            Builder::slice(e7, 2 * m, m),
            b.whole(t7),
        )?;
        b.algorithm = Algorithm::Direct;
        let o = c.m7a_b0_out + c.m7a_b1_out;
        b.plain(
            "mixed_7a b2.2",
            &m7.branch2_2,
            b.whole(t7),
            Builder::slice(x8, o, c.m7a_b2_out),
        )?;
        b.max_pool(
            "mixed_7a",
            b.whole(x17),
            Builder::slice(x8, o + c.m7a_b2_out, c.c6),
        );

        let mut block8s: Vec<_> = net.repeat_3.iter().collect();
        block8s.push(&net.block8);
        factorised(&mut b, "block8", block8s, x8)?;

        let plan = CpuPlan {
            convs: b.convs,
            stem_rgb,
            stem_grey,
            stem_channels,
            steps: b.steps,
            input,
            output: x8,
            buffers: b.buffers,
            kernel: MicroKernel::detect(),
            threads: threads.max(1),
            workspace: Mutex::new(None),
            profiling: AtomicBool::new(false),
            timings: Mutex::new(Vec::new()),
        };
        Ok((plan, b.folded))
    }
}

/// Factorised residual blocks on the stream `x`: work buffer `[b1 entry | b0 | b1]`.
fn factorised<'a>(
    b: &mut Builder,
    name: &str,
    blocks: impl IntoIterator<Item = &'a crate::model::network::FactorisedBlock>,
    x: usize,
) -> candle_core::Result<()> {
    let blocks: Vec<_> = blocks.into_iter().collect();
    let Some(w) = blocks.first().map(|blk| blk.width) else {
        return Ok(());
    };
    let work = b.buffer(3 * w);
    let tmp = b.buffer(w);
    let entry_out: Vec<usize> = range(w, 2 * w).chain(0..w).collect();
    for blk in &blocks {
        let p = name;
        let xs = b.whole(x);
        b.conv(
            &format!("{p} entry"),
            &blk.entry,
            None,
            Some(&entry_out),
            xs,
            Builder::slice(work, 0, 2 * w),
            RELU,
        )?;
        b.plain(
            &format!("{p} b1.1"),
            &blk.branch1_1,
            Builder::slice(work, 0, w),
            b.whole(tmp),
        )?;
        b.plain(
            &format!("{p} b1.2"),
            &blk.branch1_2,
            b.whole(tmp),
            Builder::slice(work, 2 * w, w),
        )?;
        b.conv(
            &format!("{p} up"),
            &blk.up,
            None,
            None,
            Builder::slice(work, w, 2 * w),
            xs,
            Epilogue {
                accumulate: true,
                relu: blk.relu,
            },
        )?;
    }
    Ok(())
}

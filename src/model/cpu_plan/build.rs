//! Turns the loaded network (its stages, as the architecture table gives them) into the plan's
//! steps. A residual block gets one working buffer laid out so that the up-projection reads its
//! concatenated branches as one contiguous channel range: the stacked entry's parts of branches
//! with exactly one more convolution come first (that convolution writes past the entry), then the
//! parts whose final output lands where their entry was (a 1x1-only branch, or a longer chain whose
//! last convolution writes back over its dead entry part), then the one-more outputs; Block35
//! becomes `[b1 entry | b0 | b2 | b1]`, Block17/Block8 `[b0 | b1]`. The entry convolution's output
//! columns and the up-projection's input rows are permuted to match (data layout only).
//! Reductions write their branches and the max-pool straight into channel slices of the next
//! stage's buffer.

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use super::exec::PreparedConv;
use super::gemm::{Epilogue, MicroKernel, PackedWeights};
use super::pool::SpinPool;
use super::qgemm::{ActQuant, QuantWeights};
use super::winograd::WinogradConv;
use super::{BufferSpec, CpuPlan, Op, Slot, Step};
use crate::model::conv::FoldedConv;
use crate::model::network::{Block, Branch, InceptionResnetV1, Join, Stage};

/// How a convolution is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Algorithm {
    /// Winograd with 2-output tiles where there is a transform (3x3 and 1x3 / 3x1 stride 1),
    /// direct for the rest.
    Auto,
    /// im2col (or in place for 1x1) and GEMM.
    Direct,
    /// Winograd with output tiles of this side (2 or 4) along each axis of 3 taps (and of 7
    /// taps for 4: 1x7 / 7x1) where the stride is 1; direct for other shapes.
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
            kernel_rows: Vec::new(),
        });
    }
    let g = conv.geometry;
    let tile = match algorithm {
        Algorithm::Auto => Some(2),
        Algorithm::Direct => None,
        Algorithm::Winograd(m) => Some(m),
    };
    let winograd = match tile {
        Some(m) if g.stride == 1 && kh * kw > 1 => {
            // In the permuted channel orders, like the packed weights.
            let taps = kh * kw;
            let mut wp = vec![0f32; cout * cin * taps];
            for (col, &o) in out_order.iter().enumerate() {
                for (c, &i) in in_order.iter().enumerate() {
                    let from = (o * cin + i) * taps;
                    wp[(col * cin + c) * taps..(col * cin + c + 1) * taps]
                        .copy_from_slice(&w[from..from + taps]);
                }
            }
            WinogradConv::new(&wp, &bias, cout, cin, (kh, kw), (g.pad_h, g.pad_w), m)
        }
        _ => None,
    };
    // A Winograd convolution never runs the direct GEMM: its panels would only take memory.
    let weights = if winograd.is_some() {
        PackedWeights::shape_only(kh * kw * cin, cout)
    } else {
        PackedWeights::pack(
            kh * kw * cin,
            cout,
            |row, col| {
                let (tap, c) = (row / cin, row % cin);
                let (ky, kx) = (tap / kw, tap % kw);
                w[((out_order[col] * cin + in_order[c]) * kh + ky) * kw + kx]
            },
            &bias,
        )
    };
    // Short kernel rows without padding read in place, one pass per kernel row (the stem: K = 9
    // per row instead of an unfolded copy of 27 floats per output pixel).
    let kernel_rows = if winograd.is_none()
        && kh > 1
        && g.pad_h == 0
        && g.pad_w == 0
        && kw * cin <= MAX_IN_PLACE_ROW
    {
        (0..kh)
            .map(|ky| {
                PackedWeights::pack(
                    kw * cin,
                    cout,
                    |row, col| {
                        let (kx, c) = (row / cin, row % cin);
                        w[((out_order[col] * cin + in_order[c]) * kh + ky) * kw + kx]
                    },
                    &bias,
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(PreparedConv {
        cin,
        kh,
        kw,
        geometry: conv.geometry,
        weights,
        winograd,
        int8: None,
        kernel_rows,
    })
}

/// Longest kernel row (`kw * cin` floats) an f32 convolution without padding reads in place
/// ([`PreparedConv::kernel_rows`]); longer rows are unfolded per tile as before.
const MAX_IN_PLACE_ROW: usize = 32;

/// Winograd where it pays (thread CPU time per step, `echonet bench --threads 1 --profile`): by
/// facenet name for the 3x3s: F(4x4) on conv2d_2b, conv2d_4a and mixed_6a's 35x35 3x3 (1.2x, 2.0x,
/// 1.8x faster than direct); F(2x2) at 17x17, where 4x4 tiles would pad the output to 20x20;
/// direct for the 32-channel 3x3s (conv2d_2a, Block35), whose transforms cost about what their
/// GEMMs save. By shape for the factorised convolutions (Block17's 1x7 / 7x1, Block8's 1x3 / 3x1,
/// stride 1): F(4) along their long axis, whose transforms are cheap against 128-192 channels.
fn algorithm_for(name: &str, conv: &FoldedConv) -> Algorithm {
    match name {
        "conv2d_2b" | "conv2d_4a" | "mixed_6a.branch1.1" => return Algorithm::Winograd(4),
        "mixed_7a.branch2.1" => return Algorithm::Winograd(2),
        _ => {}
    }
    let dims = conv.weight.dims();
    let (kh, kw) = (dims.get(2).copied(), dims.get(3).copied());
    match (kh, kw) {
        (Some(1), Some(3 | 7)) | (Some(3 | 7), Some(1)) if conv.geometry.stride == 1 => {
            Algorithm::Winograd(4)
        }
        _ => Algorithm::Direct,
    }
}

/// `"<kind> b1.2"` for the profile, from a facenet name such as `repeat_2.3.branch1.2`.
fn branch_label(kind: &str, name: &str) -> String {
    let short = name.rsplit_once(".branch").map_or(name, |(_, rest)| rest);
    format!("{kind} b{short}")
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
        let c1a = net.conv2d_1a.out_channels();
        let stem_label = format!("conv2d_1a 3x3 s2 {stem_channels}->{c1a}");
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
                    label: format!("conv2d_1a grey 3x3 s2 1->{c1a}"),
                    conv: g.clone(),
                });
                Some(b.convs.len() - 1)
            }
            None => None,
        };
        let mut x = b.buffer(c1a);
        b.steps.push(Step {
            op: Op::Stem {
                src: b.whole(input),
                dst: b.whole(x),
            },
            label: stem_label,
        });
        for stage in &net.stages {
            match stage {
                Stage::Conv(c) => {
                    let y = b.buffer(c.conv.out_channels());
                    b.algorithm = algorithm_for(&c.name, &c.conv);
                    b.plain(&c.name, &c.conv, b.whole(x), b.whole(y))?;
                    x = y;
                }
                Stage::MaxPool { name } => {
                    let y = b.buffer(b.buffers[x].channels);
                    b.max_pool(name, b.whole(x), b.whole(y));
                    x = y;
                }
                Stage::Block(blk) => match &blk.join {
                    Join::Residual { up, relu } => residual(&mut b, blk, up, *relu, x)?,
                    Join::Pool => x = reduction(&mut b, blk, x)?,
                },
            }
        }

        let plan = CpuPlan {
            convs: b.convs,
            stem_rgb,
            stem_grey,
            stem_channels,
            steps: b.steps,
            input,
            output: x,
            buffers: b.buffers,
            kernel: MicroKernel::detect(),
            threads: threads.max(1),
            workspace: Mutex::new(None),
            pool: SpinPool::new(threads.max(1)),
            profiling: AtomicBool::new(false),
            timings: Mutex::new(Vec::new()),
        };
        Ok((plan, b.folded))
    }
}

/// Runs one branch's convolutions after its entry: from `src` through fresh intermediate buffers
/// into `dst`.
fn chain(
    b: &mut Builder,
    kind: &str,
    branch: &Branch,
    src: Slot,
    dst: Slot,
) -> candle_core::Result<()> {
    let mut src = src;
    let last = branch.convs.len().saturating_sub(1);
    for (j, c) in branch.convs.iter().enumerate() {
        let out = if j == last {
            dst
        } else {
            let t = b.buffer(c.conv.out_channels());
            b.whole(t)
        };
        b.algorithm = algorithm_for(&c.name, &c.conv);
        b.plain(&branch_label(kind, &c.name), &c.conv, src, out)?;
        src = out;
    }
    Ok(())
}

/// Channels of a branch's output: its last convolution's, or its entry part's.
fn out_width(br: &Branch) -> usize {
    br.convs
        .last()
        .map_or(br.entry.map_or(0, |e| e.1), |c| c.conv.out_channels())
}

/// Where a residual branch's output lands in the block's work buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Landing {
    /// Over its own entry part (no convolution after the entry, or two or more).
    InPlace,
    /// Past the entry (exactly one convolution after the entry, or no entry part).
    After,
}

/// A residual block on the stream `x`, the up-projection accumulating into `x` in place.
fn residual(
    b: &mut Builder,
    blk: &Block,
    up: &FoldedConv,
    relu: bool,
    x: usize,
) -> candle_core::Result<()> {
    let landing: Vec<Landing> = blk
        .branches
        .iter()
        .map(|br| match (br.entry, br.convs.len()) {
            (Some(_), n) if n != 1 => Landing::InPlace,
            _ => Landing::After,
        })
        .collect();
    if blk
        .branches
        .iter()
        .any(|br| br.entry.is_none() && br.convs.is_empty())
    {
        candle_core::bail!("cpu plan {}: a branch without convolutions", blk.kind);
    }
    // Buffer order of the entry's parts: After branches first, then InPlace ones.
    let mut entry_out = Vec::new();
    let mut entry_at = vec![0usize; blk.branches.len()];
    for pass in [Landing::After, Landing::InPlace] {
        for (i, br) in blk.branches.iter().enumerate() {
            if let (Some((offset, width)), true) = (br.entry, landing[i] == pass) {
                entry_at[i] = entry_out.len();
                entry_out.extend(offset..offset + width);
            }
        }
    }
    let entry_width = entry_out.len();
    let after_width: usize = blk
        .branches
        .iter()
        .zip(&landing)
        .filter(|(_, l)| **l == Landing::After)
        .map(|(br, _)| out_width(br))
        .sum();
    let work = b.buffer(entry_width + after_width);
    // Where each branch's output lands, and the up-projection's input rows in buffer order.
    let mut final_at = vec![0usize; blk.branches.len()];
    let mut next_after = entry_width;
    let mut original = Vec::with_capacity(blk.branches.len());
    let mut o = 0;
    for (i, br) in blk.branches.iter().enumerate() {
        original.push(o);
        o += out_width(br);
        final_at[i] = match landing[i] {
            Landing::InPlace => entry_at[i],
            Landing::After => {
                next_after += out_width(br);
                next_after - out_width(br)
            }
        };
    }
    let up_start =
        final_at.iter().copied().min().ok_or_else(|| {
            candle_core::Error::Msg(format!("cpu plan {}: no branches", blk.kind))
        })?;
    let mut order: Vec<usize> = (0..blk.branches.len()).collect();
    order.sort_by_key(|&i| final_at[i]);
    let up_in: Vec<usize> = order
        .iter()
        .flat_map(|&i| original[i]..original[i] + out_width(&blk.branches[i]))
        .collect();
    let xs = b.whole(x);
    let kind = blk.kind;
    if let Some(entry) = &blk.entry {
        b.algorithm = Algorithm::Direct;
        b.conv(
            &format!("{kind} entry"),
            entry,
            None,
            Some(&entry_out),
            xs,
            Builder::slice(work, 0, entry_width),
            RELU,
        )?;
    }
    for (i, br) in blk.branches.iter().enumerate() {
        let src = match br.entry {
            Some((_, width)) => Builder::slice(work, entry_at[i], width),
            None => xs,
        };
        chain(
            b,
            kind,
            br,
            src,
            Builder::slice(work, final_at[i], out_width(br)),
        )?;
    }
    b.algorithm = Algorithm::Direct;
    b.conv(
        &format!("{kind} up"),
        up,
        Some(&up_in),
        None,
        Builder::slice(work, up_start, up_in.len()),
        xs,
        Epilogue {
            accumulate: true,
            relu,
        },
    )
}

/// A reduction from the stream `x` into a new stream `[branches... | pool]`, returned.
fn reduction(b: &mut Builder, blk: &Block, x: usize) -> candle_core::Result<usize> {
    let kind = blk.kind;
    let xs = b.whole(x);
    if blk.branches.iter().any(|br| br.convs.is_empty()) {
        candle_core::bail!(
            "cpu plan {kind}: a reduction branch must end in a convolution of its own"
        );
    }
    let widths: Vec<usize> = blk.branches.iter().map(out_width).collect();
    let pooled = b.buffers[x].channels;
    let y = b.buffer(widths.iter().sum::<usize>() + pooled);
    let entry = match &blk.entry {
        Some(e) => {
            let t = b.buffer(e.out_channels());
            b.algorithm = Algorithm::Direct;
            b.plain(&format!("{kind} entry"), e, xs, b.whole(t))?;
            Some(t)
        }
        None => None,
    };
    let mut offset = 0;
    for (br, width) in blk.branches.iter().zip(&widths) {
        let src = match (br.entry, entry) {
            (Some((o, w)), Some(t)) => Builder::slice(t, o, w),
            _ => xs,
        };
        chain(b, kind, br, src, Builder::slice(y, offset, *width))?;
        offset += width;
    }
    b.max_pool(kind, xs, Builder::slice(y, offset, pooled));
    Ok(y)
}

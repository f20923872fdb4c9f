//! The InceptionResNet-v1 architecture: the one description of the network, and the facts a
//! bundle records so that a file alone says which network it holds.
//!
//! [`INCEPTION_RESNET_V1`] is the network as a table: stem convolutions, the max-pool, and the
//! Inception blocks, each block its branches as `BasicConv2d` rows (output channels at width 1,
//! kernel, stride, per-axis padding), how the branches are joined (residual up-projection with its
//! scale and ReLU, or concatenated beside a 3x3/2 max-pool) and how often it repeats.
//! [`Architecture::trunk`] walks the table once for a width multiplier into concrete
//! [`StageSpec`]s (channels in and out, facenet-pytorch parameter names); the inference network
//! (`model::network`, and through it the prepared CPU plan) and the trainable network
//! (`train::net`) are both built from that list, so neither spells out a layer of its own.

use serde::{Deserialize, Serialize};

/// Name written into bundles for this network family.
pub const ARCH_NAME: &str = "inception_resnet_v1";
/// Version of the layer layout below; bumped if block structure or naming ever changes.
pub const ARCH_VERSION: u32 = 1;
/// Smallest square input that still leaves a 1x1 map after `mixed_7a`.
pub const MIN_INPUT_SIZE: usize = 75;

/// Every BatchNorm of the network (2d and the 1d bottleneck) uses this epsilon.
pub const BN_EPS: f64 = 1e-3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Always [`ARCH_NAME`].
    pub name: String,
    /// Always [`ARCH_VERSION`] for bundles this build can read.
    pub version: u32,
    /// Channel multiplier: 1.0 is the published network (1792 pooled features); smaller values
    /// give the CPU-trainable variants. Each base channel count c becomes max(1, round(c*width)).
    pub width: f64,
    /// Size of the `last_linear` + `last_bn` bottleneck, or None when the heads sit directly on
    /// the pooled features.
    pub embedding: Option<usize>,
}

impl Architecture {
    pub fn new(width: f64, embedding: Option<usize>) -> Self {
        Self {
            name: ARCH_NAME.to_string(),
            version: ARCH_VERSION,
            width,
            embedding,
        }
    }

    /// The trunk for this width and a stem of `input_channels`: the table walked into stages.
    pub fn trunk(&self, input_channels: usize) -> Vec<StageSpec> {
        trunk(self.width, input_channels)
    }

    /// Channels of the pooled features (1792 at width 1).
    pub fn feature_channels(&self) -> usize {
        trunk_channels(&self.trunk(1))
    }

    /// Width of the vector the task heads read: the bottleneck when present, else the pooled features.
    pub fn head_input_dim(&self) -> usize {
        self.embedding.unwrap_or_else(|| self.feature_channels())
    }

    /// Checks the fields a reader relies on; `Err` holds a sentence naming the field.
    pub fn check(&self) -> Result<(), String> {
        if self.name != ARCH_NAME {
            return Err(format!(
                "architecture.name is {:?}, expected {ARCH_NAME:?}",
                self.name
            ));
        }
        if self.version != ARCH_VERSION {
            return Err(format!(
                "architecture.version is {}, this build reads version {ARCH_VERSION}",
                self.version
            ));
        }
        if !(self.width.is_finite() && self.width > 0.0 && self.width <= 4.0) {
            return Err(format!(
                "architecture.width is {}, expected a number in (0, 4]",
                self.width
            ));
        }
        if self.embedding == Some(0) {
            return Err("architecture.embedding is 0, expected a positive size or absent".into());
        }
        Ok(())
    }
}

/// One `BasicConv2d` row of the table (bias-free convolution, BatchNorm, ReLU): output channels
/// at width 1, kernel (h, w), stride, zero padding (h, w).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvRow {
    pub out: usize,
    pub kernel: (usize, usize),
    pub stride: usize,
    pub pad: (usize, usize),
}

const fn conv(out: usize, kernel: (usize, usize), stride: usize, pad: (usize, usize)) -> ConvRow {
    ConvRow {
        out,
        kernel,
        stride,
        pad,
    }
}

/// A 1x1 convolution (the entry of most branches).
const fn c1(out: usize) -> ConvRow {
    conv(out, (1, 1), 1, (0, 0))
}

/// A 3x3 convolution with `pad` on both axes.
const fn c3(out: usize, stride: usize, pad: usize) -> ConvRow {
    conv(out, (3, 3), stride, (pad, pad))
}

/// How an Inception block joins its branches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Join {
    /// Branches concatenated, a biased 1x1 up-projection (`<block>.conv2d`) back to the block's
    /// width, multiplied by `scale`, added to the block's input, then ReLU when `relu`.
    Residual { scale: f32, relu: bool },
    /// Branches concatenated with a 3x3/2 max-pool of the input (last): a reduction.
    Pool,
}

/// An Inception block: its branches (each a chain of `BasicConv2d`; facenet names a one-conv
/// branch `branchK` and a longer one `branchK.0`, `branchK.1`, ...) and its join.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockRow {
    /// Short name for logs and profiles ("block35", "mixed_6a", ...).
    pub kind: &'static str,
    pub branches: &'static [&'static [ConvRow]],
    pub join: Join,
}

/// One row of the network table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Row {
    /// A stem `BasicConv2d`, by facenet name.
    Conv(&'static str, ConvRow),
    /// A 3x3/2 max-pool, by facenet name.
    MaxPool(&'static str),
    /// A block under facenet name `name`: repeated (`name.0`, `name.1`, ...) or once (`name`).
    Block {
        name: &'static str,
        repeats: Option<usize>,
        block: BlockRow,
    },
}

/// 35x35 residual block (facenet `Block35`).
const BLOCK35: BlockRow = BlockRow {
    kind: "block35",
    branches: &[
        &[c1(32)],
        &[c1(32), c3(32, 1, 1)],
        &[c1(32), c3(32, 1, 1), c3(32, 1, 1)],
    ],
    join: Join::Residual {
        scale: 0.17,
        relu: true,
    },
};

/// Reduction 35 -> 17 (`Mixed_6a`).
const MIXED_6A: BlockRow = BlockRow {
    kind: "mixed_6a",
    branches: &[&[c3(384, 2, 0)], &[c1(192), c3(192, 1, 1), c3(256, 2, 0)]],
    join: Join::Pool,
};

/// 17x17 residual block (`Block17`): a factorised 1x7 / 7x1 branch, each padded on one axis.
const BLOCK17: BlockRow = BlockRow {
    kind: "block17",
    branches: &[
        &[c1(128)],
        &[
            c1(128),
            conv(128, (1, 7), 1, (0, 3)),
            conv(128, (7, 1), 1, (3, 0)),
        ],
    ],
    join: Join::Residual {
        scale: 0.10,
        relu: true,
    },
};

/// Reduction 17 -> 8 (`Mixed_7a`).
const MIXED_7A: BlockRow = BlockRow {
    kind: "mixed_7a",
    branches: &[
        &[c1(256), c3(384, 2, 0)],
        &[c1(256), c3(256, 2, 0)],
        &[c1(256), c3(256, 1, 1), c3(256, 2, 0)],
    ],
    join: Join::Pool,
};

/// 8x8 residual block (`Block8`): a factorised 1x3 / 3x1 branch.
const BLOCK8_BRANCHES: &[&[ConvRow]] = &[
    &[c1(192)],
    &[
        c1(192),
        conv(192, (1, 3), 1, (0, 1)),
        conv(192, (3, 1), 1, (1, 0)),
    ],
];

const BLOCK8: BlockRow = BlockRow {
    kind: "block8",
    branches: BLOCK8_BRANCHES,
    join: Join::Residual {
        scale: 0.20,
        relu: true,
    },
};

/// The last `Block8` (`noReLU=True`, scale 1).
const BLOCK8_LAST: BlockRow = BlockRow {
    kind: "block8",
    branches: BLOCK8_BRANCHES,
    join: Join::Residual {
        scale: 1.0,
        relu: false,
    },
};

/// facenet-pytorch's `InceptionResnetV1` trunk (the EchoNet backbone), input to pooled features.
pub const INCEPTION_RESNET_V1: &[Row] = &[
    Row::Conv("conv2d_1a", c3(32, 2, 0)),
    Row::Conv("conv2d_2a", c3(32, 1, 0)),
    Row::Conv("conv2d_2b", c3(64, 1, 1)),
    Row::MaxPool("maxpool_3a"),
    Row::Conv("conv2d_3b", c1(80)),
    Row::Conv("conv2d_4a", c3(192, 1, 0)),
    Row::Conv("conv2d_4b", c3(256, 2, 0)),
    Row::Block {
        name: "repeat_1",
        repeats: Some(5),
        block: BLOCK35,
    },
    Row::Block {
        name: "mixed_6a",
        repeats: None,
        block: MIXED_6A,
    },
    Row::Block {
        name: "repeat_2",
        repeats: Some(10),
        block: BLOCK17,
    },
    Row::Block {
        name: "mixed_7a",
        repeats: None,
        block: MIXED_7A,
    },
    Row::Block {
        name: "repeat_3",
        repeats: Some(5),
        block: BLOCK8,
    },
    Row::Block {
        name: "block8",
        repeats: None,
        block: BLOCK8_LAST,
    },
];

/// One `BasicConv2d` of a concrete network: facenet name prefix (`<name>.conv.weight`,
/// `<name>.bn.*`), channels, kernel, stride, padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvSpec {
    pub name: String,
    pub cin: usize,
    pub cout: usize,
    pub kernel: (usize, usize),
    pub stride: usize,
    pub pad: (usize, usize),
}

impl ConvSpec {
    /// A 1x1, stride-1, unpadded convolution: branches starting with one read the same input and
    /// can be computed as one stacked convolution.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == (1, 1) && self.stride == 1 && self.pad == (0, 0)
    }

    /// Output size for an `h` x `w` input, or None when the kernel does not fit.
    pub fn output_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let axis =
            |x: usize, k: usize, p: usize| (x + 2 * p).checked_sub(k).map(|d| d / self.stride + 1);
        Some((
            axis(h, self.kernel.0, self.pad.0)?,
            axis(w, self.kernel.1, self.pad.1)?,
        ))
    }
}

/// The residual join of a concrete block: the biased 1x1 up-projection `<block>.conv2d`
/// (`cin` = the concatenated branches, `cout` = the block's width), its scale and ReLU.
#[derive(Debug, Clone, PartialEq)]
pub struct UpSpec {
    pub name: String,
    pub cin: usize,
    pub cout: usize,
    pub scale: f32,
    pub relu: bool,
}

/// How a concrete block joins its branches.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinSpec {
    Residual(UpSpec),
    /// Concatenated with a 3x3/2 max-pool of the input, which comes last.
    Pool,
}

/// One block of a concrete network.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    /// The table's short name ("block35", ...).
    pub kind: &'static str,
    /// facenet name prefix (`repeat_1.3`, `mixed_6a`, `block8`).
    pub name: String,
    pub cin: usize,
    pub cout: usize,
    /// Each branch's convolutions in order, with full names.
    pub branches: Vec<Vec<ConvSpec>>,
    pub join: JoinSpec,
}

impl BlockSpec {
    /// Output channels of each branch, in order (the max-pool of a reduction not included).
    pub fn branch_widths(&self) -> Vec<usize> {
        self.branches
            .iter()
            .map(|b| b.last().map_or(self.cin, |c| c.cout))
            .collect()
    }
}

/// One stage of a concrete network, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum StageSpec {
    Conv(ConvSpec),
    MaxPool { name: &'static str, channels: usize },
    Block(BlockSpec),
}

impl StageSpec {
    /// Channels out of this stage.
    pub fn out_channels(&self) -> usize {
        match self {
            StageSpec::Conv(c) => c.cout,
            StageSpec::MaxPool { channels, .. } => *channels,
            StageSpec::Block(b) => b.cout,
        }
    }

    /// Output size for an `h` x `w` input, or None when some kernel does not fit.
    pub fn output_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let pool =
            |h: usize, w: usize| Some((h.checked_sub(3)? / 2 + 1, w.checked_sub(3)? / 2 + 1));
        match self {
            StageSpec::Conv(c) => c.output_size(h, w),
            StageSpec::MaxPool { .. } => pool(h, w),
            StageSpec::Block(b) => {
                let out = match b.join {
                    JoinSpec::Residual(_) => (h, w),
                    JoinSpec::Pool => pool(h, w)?,
                };
                for branch in &b.branches {
                    let mut size = (h, w);
                    for c in branch {
                        size = c.output_size(size.0, size.1)?;
                    }
                    if size != out {
                        return None;
                    }
                }
                Some(out)
            }
        }
    }
}

/// `max(1, round(base * width))`, rounding halves up, as the golden script does.
pub fn scaled(base: usize, width: f64) -> usize {
    ((base as f64 * width + 0.5).floor() as usize).max(1)
}

/// [`INCEPTION_RESNET_V1`] at `width` with a stem of `input_channels`: every channel count scaled
/// (see [`scaled`]) and threaded through, every name spelled as facenet-pytorch spells it.
pub fn trunk(width: f64, input_channels: usize) -> Vec<StageSpec> {
    let spec = |name: String, cin: usize, row: &ConvRow| ConvSpec {
        name,
        cin,
        cout: scaled(row.out, width),
        kernel: row.kernel,
        stride: row.stride,
        pad: row.pad,
    };
    let mut channels = input_channels;
    let mut stages = Vec::new();
    for row in INCEPTION_RESNET_V1 {
        match row {
            Row::Conv(name, r) => {
                let c = spec(name.to_string(), channels, r);
                channels = c.cout;
                stages.push(StageSpec::Conv(c));
            }
            Row::MaxPool(name) => stages.push(StageSpec::MaxPool { name, channels }),
            Row::Block {
                name,
                repeats,
                block,
            } => {
                let names: Vec<String> = match repeats {
                    Some(n) => (0..*n).map(|i| format!("{name}.{i}")).collect(),
                    None => vec![name.to_string()],
                };
                for prefix in names {
                    let branches: Vec<Vec<ConvSpec>> = block
                        .branches
                        .iter()
                        .enumerate()
                        .map(|(i, rows)| {
                            let mut cin = channels;
                            rows.iter()
                                .enumerate()
                                .map(|(j, r)| {
                                    let name = if rows.len() == 1 {
                                        format!("{prefix}.branch{i}")
                                    } else {
                                        format!("{prefix}.branch{i}.{j}")
                                    };
                                    let c = spec(name, cin, r);
                                    cin = c.cout;
                                    c
                                })
                                .collect()
                        })
                        .collect();
                    let mixed: usize = branches
                        .iter()
                        .map(|b| b.last().map_or(channels, |c| c.cout))
                        .sum();
                    let (join, cout) = match block.join {
                        Join::Residual { scale, relu } => (
                            JoinSpec::Residual(UpSpec {
                                name: format!("{prefix}.conv2d"),
                                cin: mixed,
                                cout: channels,
                                scale,
                                relu,
                            }),
                            channels,
                        ),
                        Join::Pool => (JoinSpec::Pool, mixed + channels),
                    };
                    stages.push(StageSpec::Block(BlockSpec {
                        kind: block.kind,
                        name: prefix,
                        cin: channels,
                        cout,
                        branches,
                        join,
                    }));
                    channels = cout;
                }
            }
        }
    }
    stages
}

/// Channels out of the last stage (the pooled feature size).
pub fn trunk_channels(stages: &[StageSpec]) -> usize {
    stages.last().map_or(0, StageSpec::out_channels)
}

/// Spatial size after the whole trunk for a square input, or None if the input is too small.
pub fn trunk_output_size(input: usize) -> Option<usize> {
    let mut size = (input, input);
    for stage in trunk(1.0, 1) {
        size = stage.output_size(size.0, size.1)?;
    }
    Some(size.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Channels after each stage kind: (conv2d_4b, mixed_6a, mixed_7a).
    fn widths(width: f64) -> (usize, usize, usize) {
        let stages = trunk(width, 3);
        let after = |name: &str| {
            stages
                .iter()
                .find(|s| match s {
                    StageSpec::Conv(c) => c.name == name,
                    StageSpec::Block(b) => b.name == name,
                    StageSpec::MaxPool { .. } => false,
                })
                .map(StageSpec::out_channels)
        };
        (
            after("conv2d_4b").unwrap_or(0),
            after("mixed_6a").unwrap_or(0),
            after("mixed_7a").unwrap_or(0),
        )
    }

    #[test]
    fn width_one_is_the_published_network() {
        assert_eq!(widths(1.0), (256, 896, 1792));
        assert_eq!(Architecture::new(1.0, None).feature_channels(), 1792);
        let stages = trunk(1.0, 3);
        // 5 stem convolutions + conv2d_1a, the max-pool, 5 + 1 + 10 + 1 + 5 + 1 blocks.
        assert_eq!(stages.len(), 7 + 23);
        let convs: usize = stages
            .iter()
            .map(|s| match s {
                StageSpec::Conv(_) => 1,
                StageSpec::MaxPool { .. } => 0,
                StageSpec::Block(b) => b.branches.iter().map(Vec::len).sum(),
            })
            .sum();
        assert_eq!(convs, 6 + 5 * 6 + 4 + 10 * 4 + 7 + 6 * 4);
    }

    #[test]
    fn width_eighth_matches_the_golden_script() {
        assert_eq!(widths(0.125), (32, 112, 224));
        let stages = trunk(0.125, 3);
        let conv = |i: usize| match &stages[i] {
            StageSpec::Conv(c) => (c.cin, c.cout),
            _ => (0, 0),
        };
        // conv2d_1a, conv2d_3b, conv2d_4a
        assert_eq!((conv(0), conv(4), conv(5)), ((3, 4), (8, 10), (10, 24)));
    }

    #[test]
    fn names_and_shapes_are_facenets() {
        let stages = trunk(1.0, 3);
        let find = |name: &str| {
            stages.iter().find_map(|s| match s {
                StageSpec::Block(b) => b.branches.iter().flatten().find(|c| c.name == name),
                StageSpec::Conv(c) => (c.name == name).then_some(c),
                StageSpec::MaxPool { .. } => None,
            })
        };
        let c = find("repeat_2.9.branch1.1").unwrap();
        assert_eq!((c.cin, c.cout, c.kernel, c.pad), (128, 128, (1, 7), (0, 3)));
        let c = find("mixed_6a.branch0").unwrap();
        assert_eq!((c.cin, c.cout, c.kernel, c.stride), (256, 384, (3, 3), 2));
        let c = find("mixed_7a.branch2.2").unwrap();
        assert_eq!((c.cin, c.cout, c.stride), (256, 256, 2));
        let c = find("repeat_1.0.branch0").unwrap();
        assert!(c.is_pointwise());
        let Some(StageSpec::Block(last)) = stages.last() else {
            panic!("the trunk ends with a block");
        };
        assert_eq!(last.name, "block8");
        let JoinSpec::Residual(up) = &last.join else {
            panic!("block8 is residual");
        };
        assert_eq!(
            (up.name.as_str(), up.cin, up.cout),
            ("block8.conv2d", 384, 1792)
        );
        assert_eq!((up.scale, up.relu), (1.0, false));
    }

    #[test]
    fn trunk_sizes() {
        assert_eq!(trunk_output_size(299), Some(8));
        assert_eq!(trunk_output_size(160), Some(3));
        assert_eq!(trunk_output_size(MIN_INPUT_SIZE), Some(1));
        assert_eq!(trunk_output_size(MIN_INPUT_SIZE - 1), None);
    }
}

//! The InceptionResNet-v1 architecture description: channel counts for a width multiplier, and
//! the facts a bundle records so that a file alone says which network it holds.

use serde::{Deserialize, Serialize};

/// Name written into bundles for this network family.
pub const ARCH_NAME: &str = "inception_resnet_v1";
/// Version of the layer layout below; bumped if block structure or naming ever changes.
pub const ARCH_VERSION: u32 = 1;
/// Smallest square input that still leaves a 1x1 map after `mixed_7a`.
pub const MIN_INPUT_SIZE: usize = 75;

/// Residual scales of facenet-pytorch's `InceptionResnetV1` (and of the EchoNet backbone).
pub const BLOCK35_SCALE: f32 = 0.17;
pub const BLOCK17_SCALE: f32 = 0.10;
pub const BLOCK8_SCALE: f32 = 0.20;
pub const BLOCK35_REPEATS: usize = 5;
pub const BLOCK17_REPEATS: usize = 10;
pub const BLOCK8_REPEATS: usize = 5;
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

    pub fn channels(&self) -> Channels {
        Channels::for_width(self.width)
    }

    /// Width of the vector the task heads read: the bottleneck when present, else the pooled features.
    pub fn head_input_dim(&self) -> usize {
        self.embedding.unwrap_or_else(|| self.channels().c7)
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

/// Channel counts of every layer for one width multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    pub c1a: usize,
    pub c2a: usize,
    pub c2b: usize,
    pub c3b: usize,
    pub c4a: usize,
    /// Output of the stem = width of every Block35.
    pub c4b: usize,
    /// Each Block35 branch.
    pub b35: usize,
    pub m6a_b0: usize,
    pub m6a_b1_mid: usize,
    pub m6a_b1_out: usize,
    /// Output of mixed_6a = width of every Block17.
    pub c6: usize,
    pub b17: usize,
    pub m7a_mid: usize,
    pub m7a_b0_out: usize,
    pub m7a_b1_out: usize,
    pub m7a_b2_out: usize,
    /// Output of mixed_7a = width of every Block8 = pooled feature size (1792 at width 1).
    pub c7: usize,
    pub b8: usize,
}

/// `max(1, round(base * width))`, rounding halves up, as the golden script does.
pub fn scaled(base: usize, width: f64) -> usize {
    ((base as f64 * width + 0.5).floor() as usize).max(1)
}

impl Channels {
    pub fn for_width(width: f64) -> Self {
        let ch = |c| scaled(c, width);
        let c4b = ch(256);
        let m6a_b0 = ch(384);
        let m6a_b1_out = ch(256);
        let c6 = m6a_b0 + m6a_b1_out + c4b;
        let m7a_b0_out = ch(384);
        let m7a_b1_out = ch(256);
        let m7a_b2_out = ch(256);
        Self {
            c1a: ch(32),
            c2a: ch(32),
            c2b: ch(64),
            c3b: ch(80),
            c4a: ch(192),
            c4b,
            b35: ch(32),
            m6a_b0,
            m6a_b1_mid: ch(192),
            m6a_b1_out,
            c6,
            b17: ch(128),
            m7a_mid: ch(256),
            m7a_b0_out,
            m7a_b1_out,
            m7a_b2_out,
            c7: m7a_b0_out + m7a_b1_out + m7a_b2_out + c6,
            b8: ch(192),
        }
    }
}

/// Spatial size after the whole trunk for a square input, or None if the input is too small.
pub fn trunk_output_size(input: usize) -> Option<usize> {
    let valid = |x: usize, k: usize, s: usize| if x < k { None } else { Some((x - k) / s + 1) };
    let x = valid(input, 3, 2)?; // conv2d_1a
    let x = valid(x, 3, 1)?; // conv2d_2a; conv2d_2b keeps size
    let x = valid(x, 3, 2)?; // maxpool_3a; conv2d_3b keeps size
    let x = valid(x, 3, 1)?; // conv2d_4a
    let x = valid(x, 3, 2)?; // conv2d_4b
    let x = valid(x, 3, 2)?; // mixed_6a
    valid(x, 3, 2) // mixed_7a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn width_one_is_the_published_network() {
        let c = Channels::for_width(1.0);
        assert_eq!((c.c4b, c.c6, c.c7), (256, 896, 1792));
    }

    #[test]
    fn width_eighth_matches_the_golden_script() {
        let c = Channels::for_width(0.125);
        assert_eq!(
            (c.c1a, c.c3b, c.c4a, c.c4b, c.c6, c.c7),
            (4, 10, 24, 32, 112, 224)
        );
    }

    #[test]
    fn trunk_sizes() {
        assert_eq!(trunk_output_size(299), Some(8));
        assert_eq!(trunk_output_size(160), Some(3));
        assert_eq!(trunk_output_size(MIN_INPUT_SIZE), Some(1));
        assert_eq!(trunk_output_size(MIN_INPUT_SIZE - 1), None);
    }
}

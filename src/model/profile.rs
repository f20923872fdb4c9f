//! A [`ConvKernel`] wrapper that times every convolution by shape, for `echonet bench --profile`:
//! where the milliseconds go, and at what rate each convolution shape runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::conv::{ConvKernel, FoldedConv};

#[derive(Debug, Default, Clone)]
pub struct ShapeStats {
    pub calls: usize,
    pub time: Duration,
    /// Multiply-adds, counted as 2 flops each.
    pub flops: f64,
}

#[derive(Debug)]
pub struct ProfiledKernel {
    inner: Arc<dyn ConvKernel>,
    stats: Mutex<BTreeMap<String, ShapeStats>>,
}

impl ProfiledKernel {
    pub fn new(inner: Arc<dyn ConvKernel>) -> Self {
        Self {
            inner,
            stats: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn reset(&self) {
        if let Ok(mut s) = self.stats.lock() {
            s.clear();
        }
    }

    /// Per-shape statistics, slowest first.
    pub fn report(&self) -> Vec<(String, ShapeStats)> {
        let mut rows: Vec<_> = self
            .stats
            .lock()
            .map(|s| s.clone().into_iter().collect())
            .unwrap_or_default();
        rows.sort_by_key(|r: &(String, ShapeStats)| std::cmp::Reverse(r.1.time));
        rows
    }
}

impl ConvKernel for ProfiledKernel {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn prefers_cpu_plan(&self) -> bool {
        self.inner.prefers_cpu_plan()
    }

    fn forward_residual(
        &self,
        parts: &[&Tensor],
        conv: &FoldedConv,
        residual: &Tensor,
        relu: bool,
    ) -> candle_core::Result<Tensor> {
        let start = Instant::now();
        let y = self.inner.forward_residual(parts, conv, residual, relu)?;
        self.record(conv, &y, start.elapsed(), " +res");
        Ok(y)
    }

    fn forward(&self, x: &Tensor, conv: &FoldedConv) -> candle_core::Result<Tensor> {
        let start = Instant::now();
        let y = self.inner.forward(x, conv)?;
        self.record(conv, &y, start.elapsed(), "");
        Ok(y)
    }
}

impl ProfiledKernel {
    fn record(&self, conv: &FoldedConv, y: &Tensor, elapsed: Duration, tag: &str) {
        let w = conv.weight.dims();
        let yd = y.dims();
        let key = format!(
            "{}x{} s{} p{},{} {:>4}->{:<4} out {}x{}{tag}",
            w[2],
            w[3],
            conv.geometry.stride,
            conv.geometry.pad_h,
            conv.geometry.pad_w,
            w[1],
            w[0],
            yd[2],
            yd[3]
        );
        let flops = 2.0 * (yd.iter().product::<usize>() * w[1] * w[2] * w[3]) as f64;
        if let Ok(mut s) = self.stats.lock() {
            let e = s.entry(key).or_default();
            e.calls += 1;
            e.time += elapsed;
            e.flops += flops;
        }
    }
}

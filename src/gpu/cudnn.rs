//! cuDNN convolution for the `cudnn` build: a [`ConvKernel`] that runs each folded convolution as
//! one cuDNN forward call with separate height and width padding, so Block17's 1x7/7x1 and
//! Block8's 1x3/3x1 convolutions need no padded copy of their input (candle's `conv2d` pads both
//! axes alike, so the candle kernel pads one axis with two extra copies first). Channel slices of
//! a stacked 1x1 output are read in place through their strides. Bias and ReLU stay candle ops.
//!
//! The algorithm cuDNN's heuristics pick is cached per shape, on the thread that owns the device
//! (cuDNN handles are per thread), so steady-state calls only set descriptors and launch. In f32
//! the math mode is plain FMA (no TF32), so f32 parity stays at f32 precision; f16 and bf16
//! accumulate in f32.

use candle_core::Tensor;

use crate::model::conv::{CandleConv, ConvKernel, FoldedConv};

/// cuDNN on CUDA tensors; candle's convolution anywhere else.
#[derive(Debug, Default, Clone, Copy)]
pub struct CudnnConv;

impl ConvKernel for CudnnConv {
    fn name(&self) -> &'static str {
        "cudnn"
    }

    fn forward(&self, x: &Tensor, conv: &FoldedConv) -> candle_core::Result<Tensor> {
        if !x.device().is_cuda() {
            return CandleConv.forward(x, conv);
        }
        let g = conv.geometry;
        let y = x.apply_op2_no_bwd(
            &conv.weight,
            &imp::CudnnConvOp {
                stride: g.stride,
                pad_h: g.pad_h,
                pad_w: g.pad_w,
            },
        )?;
        let y = y.broadcast_add(&conv.bias.reshape((1, conv.out_channels(), 1, 1))?)?;
        if conv.relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

mod imp {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;

    use candle_core::cuda_backend::cudarc::cudnn::{sys, ConvForward, Cudnn, CudnnDataType};
    use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
    use candle_core::cuda_backend::{CudaDType, CudaStorageSlice};
    use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Shape, WithDType};
    use half::{bf16, f16};

    type AlgoKey = (Vec<usize>, Vec<usize>, [usize; 3], u8);

    thread_local! {
        static HANDLES: RefCell<HashMap<candle_core::cuda_backend::DeviceId, Arc<Cudnn>>> =
            RefCell::new(HashMap::new());
        static ALGOS: RefCell<HashMap<AlgoKey, sys::cudnnConvolutionFwdAlgo_t>> =
            RefCell::new(HashMap::new());
    }

    pub struct CudnnConvOp {
        pub stride: usize,
        pub pad_h: usize,
        pub pad_w: usize,
    }

    fn err(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
        candle_core::Error::Msg(format!("cuDNN {what}: {e:?}"))
    }

    impl CudnnConvOp {
        fn run<T>(
            &self,
            x: &CudaStorage,
            x_l: &Layout,
            w: &CudaStorage,
            w_l: &Layout,
            tag: u8,
        ) -> candle_core::Result<(CudaStorage, Shape)>
        where
            T: CudaDType + DeviceRepr + CudnnDataType + WithDType,
        {
            let dev = &x.device;
            let (n, c, h, wd) = x_l.shape().dims4()?;
            let (co, ci, kh, kw) = w_l.shape().dims4()?;
            if ci != c {
                candle_core::bail!("cuDNN conv: input has {c} channels, the weight takes {ci}");
            }
            if !w_l.is_contiguous() {
                candle_core::bail!("cuDNN conv: the weight must be contiguous");
            }
            let (ph, pw, s) = (self.pad_h, self.pad_w, self.stride);
            if h + 2 * ph < kh || wd + 2 * pw < kw || s == 0 {
                candle_core::bail!("cuDNN conv: {h}x{wd} input too small for a {kh}x{kw} kernel");
            }
            let (oh, ow) = ((h + 2 * ph - kh) / s + 1, (wd + 2 * pw - kw) / s + 1);
            let xs = x.as_cuda_slice::<T>()?.slice(x_l.start_offset()..);
            let ws = w.as_cuda_slice::<T>()?.slice(w_l.start_offset()..);
            let cudnn = HANDLES.with(|m| -> candle_core::Result<Arc<Cudnn>> {
                if let Some(h) = m.borrow().get(&dev.id()) {
                    return Ok(h.clone());
                }
                let h = Cudnn::new(dev.cuda_stream()).map_err(|e| err("handle", e))?;
                m.borrow_mut().insert(dev.id(), h.clone());
                Ok(h)
            })?;
            let i32s = |v: usize| v as std::ffi::c_int;
            let mut conv = cudnn
                .create_conv2d::<f32>(
                    [i32s(ph), i32s(pw)],
                    [i32s(s), i32s(s)],
                    [1, 1],
                    sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                )
                .map_err(|e| err("convolution descriptor", e))?;
            // f32: plain FMA math, no TF32 (f32 parity); f16/bf16: tensor cores.
            let math = if tag == 0 {
                sys::cudnnMathType_t::CUDNN_FMA_MATH
            } else {
                sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
            };
            conv.set_math_type(math).map_err(|e| err("math type", e))?;
            let st = x_l.stride();
            let x_desc = cudnn
                .create_4d_tensor_ex::<T>(
                    [i32s(n), i32s(c), i32s(h), i32s(wd)],
                    [i32s(st[0]), i32s(st[1]), i32s(st[2]), i32s(st[3])],
                )
                .map_err(|e| err("input descriptor", e))?;
            let w_desc = cudnn
                .create_4d_filter::<T>(
                    sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                    [i32s(co), i32s(ci), i32s(kh), i32s(kw)],
                )
                .map_err(|e| err("filter descriptor", e))?;
            let y_desc = cudnn
                .create_4d_tensor::<T>(
                    sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                    [i32s(n), i32s(co), i32s(oh), i32s(ow)],
                )
                .map_err(|e| err("output descriptor", e))?;
            let fwd = ConvForward {
                conv: &conv,
                x: &x_desc,
                w: &w_desc,
                y: &y_desc,
            };
            let key: AlgoKey = (x_l.dims().to_vec(), w_l.dims().to_vec(), [ph, pw, s], tag);
            let algo = match ALGOS.with(|a| a.borrow().get(&key).copied()) {
                Some(a) => a,
                None => {
                    let a = fwd.pick_algorithm().map_err(|e| err("algorithm", e))?;
                    ALGOS.with(|m| m.borrow_mut().insert(key, a));
                    a
                }
            };
            let ws_bytes = fwd
                .get_workspace_size(algo)
                .map_err(|e| err("workspace size", e))?;
            // SAFETY: uninitialised device memory, fully written by the convolution (output) or
            // used as scratch by cuDNN (workspace) before anything reads it.
            let mut y = unsafe { dev.alloc::<T>(n * co * oh * ow)? };
            let mut workspace = if ws_bytes > 0 {
                Some(unsafe { dev.alloc::<u8>(ws_bytes)? })
            } else {
                None
            };
            // SAFETY: the descriptors describe exactly these buffers: x through its layout's
            // offset and strides, w contiguous [co, ci, kh, kw], y a fresh [n, co, oh, ow].
            unsafe {
                fwd.launch(
                    algo,
                    workspace.as_mut(),
                    (T::from_f64(1.0), T::from_f64(0.0)),
                    &xs,
                    &ws,
                    &mut y,
                )
            }
            .map_err(|e| err("forward", e))?;
            Ok((
                CudaStorage::wrap_cuda_slice(y, dev.clone()),
                Shape::from((n, co, oh, ow)),
            ))
        }
    }

    impl CustomOp2 for CudnnConvOp {
        fn name(&self) -> &'static str {
            "cudnn-conv2d"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("the cuDNN convolution runs on CUDA tensors only")
        }

        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            x_l: &Layout,
            w: &CudaStorage,
            w_l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            match (&x.slice, &w.slice) {
                (CudaStorageSlice::F32(_), CudaStorageSlice::F32(_)) => {
                    self.run::<f32>(x, x_l, w, w_l, 0)
                }
                (CudaStorageSlice::F16(_), CudaStorageSlice::F16(_)) => {
                    self.run::<f16>(x, x_l, w, w_l, 1)
                }
                (CudaStorageSlice::BF16(_), CudaStorageSlice::BF16(_)) => {
                    self.run::<bf16>(x, x_l, w, w_l, 2)
                }
                _ => candle_core::bail!(
                    "cuDNN conv: input and weight must both be f32, f16 or bf16 of the same type"
                ),
            }
        }
    }
}

//! After warm-up, a frame through the prepared CPU plan allocates nothing: a counting global
//! allocator (this test binary only) counts allocations on the calling thread and the pool's
//! worker threads alike. The count is exactly zero, single-threaded and with two threads (the
//! plan's own pool hands layers over through atomics; rayon's, used before session 11, allocated
//! a job-injector block once per 63 hand-overs). The int8 plan is held to the same
//! single-threaded zero.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use echonet_edge::model::bundle::{BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION};
use echonet_edge::model::{
    conv_kernel_named, import::probe_batch, Architecture, EchoNetModel, InputSpec, Manifest,
    Provenance, RunOptions, StorageDtype, WeightStore,
};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Allocations made by the current thread: the single-threaded plan runs wholly on the
    /// caller, while idle pool workers left from the two-thread run may still allocate for
    /// their own bookkeeping (seen under qemu-aarch64) and must not be charged to it.
    static THREAD_ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
    // `try_with`: a thread being torn down has no slot left; its allocations still count globally.
    let _ = THREAD_ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn this_thread_allocations() -> usize {
    THREAD_ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const FRAMES: usize = 130;

#[test]
fn planned_frame_allocates_nothing_after_warm_up() {
    echonet_edge::runtime::configure_cpu_threads(Some(2));
    let manifest = Manifest {
        format: BUNDLE_FORMAT.into(),
        format_version: BUNDLE_FORMAT_VERSION,
        architecture: Architecture::new(0.125, None),
        input: InputSpec::facenet(96, 3),
        tasks: vec![],
        dtype: StorageDtype::F32,
        intended_use: "test".into(),
        provenance: Provenance {
            source: "synthetic".into(),
            data: "none".into(),
            created: String::new(),
            tool: "tests/plan_alloc.rs".into(),
            metrics: Default::default(),
            notes: String::new(),
        },
        content_hash: String::new(),
    };
    let opts = RunOptions {
        kernel: conv_kernel_named("auto").unwrap(),
        ..RunOptions::cpu()
    };
    let model = EchoNetModel::from_store(manifest, &WeightStore::synthetic(3), &opts).unwrap();
    let plan = model.cpu_plan().expect("f32 on the CPU runs the plan");
    assert_eq!(plan.threads(), 2);
    let batch = probe_batch(2, &model.manifest().input).unwrap();
    let input = batch.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let shape = (2, 3, 96, 96);
    let mut out = vec![0f32; 2 * plan.feature_channels()];
    plan.features_into(&input, shape, &mut out).unwrap(); // warm-up: buffers made here
    let warm = out.clone();
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for _ in 0..FRAMES {
        plan.features_into(&input, shape, &mut out).unwrap();
    }
    let during = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert_eq!(
        during, 0,
        "{during} allocations in {FRAMES} two-thread planned frames after warm-up"
    );
    assert_eq!(out, warm, "the same frame gives the same features");
    assert!(plan.workspace_bytes() > 0);

    // One thread: no pool hand-over at all, and not a single allocation on the calling thread,
    // which does all of the work.
    let single = echonet_edge::model::cpu_plan::CpuPlan::build(model.network(), 1).unwrap();
    single.features_into(&input, shape, &mut out).unwrap();
    assert_eq!(out, warm, "one thread computes the same features");
    let before = this_thread_allocations();
    for _ in 0..10 {
        single.features_into(&input, shape, &mut out).unwrap();
    }
    let during = this_thread_allocations() - before;
    assert_eq!(
        during, 0,
        "{during} allocations in 10 single-threaded frames"
    );

    // The int8 plan (calibrated on the probe batch): the same, quantising every tile into the
    // scratch made at warm-up.
    let stats =
        echonet_edge::model::quantize::calibrate(&single, &[(input.clone(), shape)]).unwrap();
    let convs = echonet_edge::model::cpu_plan::CpuPlan::convolutions(model.network()).unwrap();
    let (table, _) = echonet_edge::model::quantize::plan_table(
        &convs,
        &stats,
        echonet_edge::model::quantize::Method::MinMax,
        1.0,
    )
    .unwrap();
    let int8 =
        echonet_edge::model::cpu_plan::CpuPlan::build_int8(model.network(), 1, &table).unwrap();
    assert!(int8.int8_convs() > 0);
    int8.features_into(&input, shape, &mut out).unwrap();
    let before = this_thread_allocations();
    for _ in 0..10 {
        int8.features_into(&input, shape, &mut out).unwrap();
    }
    let during = this_thread_allocations() - before;
    assert_eq!(
        during, 0,
        "{during} allocations in 10 single-threaded int8 frames"
    );
}

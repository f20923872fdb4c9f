# The two commands of the README. Both install what they need first.
#   make run    build, check the installation, and run the bedside daemon (echonet run)
#   make test   format check, clippy (warnings are errors), build and pass every test (what .ci/run
#               calls), then build the CUDA binary
#   make cuda   the CUDA binary only (target/cuda/release/echonet); no GPU needed to build it
CARGO ?= cargo
# The GPU the CUDA binary's kernels are compiled for: 87 = Jetson Orin (the design card's device).
# candle embeds PTX, which the driver compiles forward at start-up, so an 87 build also runs on
# compute 8.9 and 9.0 cards (L4, H100, H200); set 80 to reach A100s too.
CUDA_COMPUTE_CAP ?= 87

.PHONY: run test deps lint bench model cuda
deps:
	@bash scripts/install-deps.sh

# MODEL=path/to/bundle.safetensors runs a bundle of your own instead of the bundled one.
MODEL ?=
run: deps
	$(CARGO) build --release
	./target/release/echonet doctor || true
	./target/release/echonet run $(if $(MODEL),--model $(MODEL),)

test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) test --release
	$(MAKE) --no-print-directory test-aarch64
	$(MAKE) --no-print-directory test-x86-baseline
	$(MAKE) cuda

# aarch64 (ARM carts, the Jetson's CPU): cross-built here, tested under qemu (scripts/aarch64.sh).
.PHONY: deps-cross aarch64 test-aarch64 test-x86-baseline jetson package
deps-cross:
	@bash scripts/install-deps.sh --cross
aarch64: deps-cross
	bash scripts/aarch64.sh build
test-aarch64: deps-cross
	bash scripts/aarch64.sh test
# x86 CPUs without AVX-512 (AVX2 + FMA kernels and their detection), emulated as a Haswell under
# qemu-x86_64 (scripts/x86-baseline.sh): on an AVX-512 machine the native run takes the AVX-512 path.
test-x86-baseline: deps-cross
	bash scripts/x86-baseline.sh
# The Jetson Orin CUDA binary (aarch64 + sm_87), cross-built without a GPU (scripts/jetson-build.sh).
jetson: deps-cross
	bash scripts/jetson-build.sh
# Release tarballs in dist/, one per target (scripts/package.sh); PACKAGE_TARGETS="aarch64-cpu ..."
# for some of x86_64-cpu x86_64-cuda aarch64-cpu jetson-cuda.
PACKAGE_TARGETS ?=
package: deps-cross
	bash scripts/package.sh $(PACKAGE_TARGETS)

# Builds with NVIDIA's CUDA 13.0 wheels from PyPI (scripts/cuda-build.sh says how); its own target
# directory keeps the CPU binary in target/release untouched. About 16 min the first time on 2 cores.
cuda: deps
	CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) CARGO="$(CARGO)" bash scripts/cuda-build.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

bench:
	$(CARGO) bench --bench forward

# Retrains the bundled demo model from scratch (about 50-90 min on one core of this 2-core VM),
# refits its out-of-distribution statistics as shipped (A4C training clips of the same phantom
# seed, margin 1.25; training records them too, from its training set's frames, and the refit
# reads frames through the runtime's sampler and preprocessing as the daemon does), evaluates it
# on unseen phantom patients, records the metrics in the bundle, writes the EF plots, and makes
# the int8 bundle from it. Update models/MANIFEST.toml's content hashes with `echonet doctor --json`.
DEMO_MODEL = models/echonet-phantom-demo.safetensors
DEMO_MODEL_INT8 = models/echonet-phantom-demo-int8.safetensors
model:
	$(CARGO) build --release
	./target/release/echonet train --phantom-seed 1 --phantom-clips 1000 --steps 2500 \
		--eval-every 250 --width 0.125 --input-size 96 --threads 1 \
		--augment-noise 0.3 --phantom-lead-mimics 0.5 \
		--tasks ef,esv,edv,lv_volume,pacemaker,la_dilation,lv_wall_normal,view_a4c \
		--out $(DEMO_MODEL) --work-dir target/demo-model-train
	./target/release/echonet ood-fit $(DEMO_MODEL) $(DEMO_MODEL) --phantom-seed 1 --phantom-clips 1000 \
		--margin 1.25
	./target/release/echonet eval --model $(DEMO_MODEL) --phantom-seed 900 --phantom-clips 100 \
		--threads 1 --record-metrics --plots docs/demo-model
	./target/release/echonet quantize $(DEMO_MODEL) $(DEMO_MODEL_INT8) --phantom-seed 950 \
		--phantom-clips 8

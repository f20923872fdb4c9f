# The two commands of the README. Both install what they need first.
#   make run    build, check the installation, and run the main job
#   make test   build and pass every test (what .ci/run calls)
CARGO ?= cargo

.PHONY: run test deps lint bench
deps:
	@bash scripts/install-deps.sh

run: deps
	$(CARGO) build --release
	./target/release/echonet doctor
	./target/release/echonet bench --iters 5

test: deps
	$(CARGO) test --release

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

bench:
	$(CARGO) bench --bench forward

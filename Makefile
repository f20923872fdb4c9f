# The two commands of the README. Both install what they need first.
#   make run    build, check the installation, and run the bedside daemon (echonet run)
#   make test   build and pass every test (what .ci/run calls)
CARGO ?= cargo

.PHONY: run test deps lint bench
deps:
	@bash scripts/install-deps.sh

# MODEL=path/to/bundle.safetensors runs a bundle of your own (none is shipped yet).
MODEL ?=
run: deps
	$(CARGO) build --release
	./target/release/echonet doctor || true
	./target/release/echonet run $(if $(MODEL),--model $(MODEL),)

test: deps
	$(CARGO) test --release

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

bench:
	$(CARGO) bench --bench forward

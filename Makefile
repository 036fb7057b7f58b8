# spark-connect-operator. The two commands: `make run` and `make test`.
.PHONY: run test build binaries e2e bench crds lint

run: binaries build
	bash e2e/make-run.sh

test:
	bash e2e/test-all.sh

binaries:
	bash e2e/cluster/build-binaries.sh

build:
	cargo build --workspace

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

e2e: binaries build
	bash e2e/run-e2e.sh

crds: build
	./target/debug/spark-connect-operator crd > crds/sparkconnect.dev.yaml
	cp crds/sparkconnect.dev.yaml charts/spark-connect-operator/crds/

bench: binaries
	bash bench/run.sh

# The operator image: a static (musl) binary on an empty base, run as a non-root user.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY e2e/Cargo.toml e2e/Cargo.toml
COPY e2e/src e2e/src
COPY e2e/images e2e/images
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin spark-connect-operator \
 && cp target/x86_64-unknown-linux-musl/release/spark-connect-operator /spark-connect-operator

# scratch: nothing but the static binary (it reaches only the apiserver, with the in-cluster CA).
FROM scratch
COPY --from=build /spark-connect-operator /spark-connect-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/spark-connect-operator"]
CMD ["run"]

# syntax=docker/dockerfile:1

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build

# jemalloc, the service's allocator, is built from source with make (the image has the C compiler).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

# The workspace's manifests name every crate under crates/, so all of them come along; only the
# service and what it depends on are compiled. The cache mounts keep the registry and the compiled
# dependencies between builds, so a change to the service recompiles the service alone; the binary
# is copied out because the target folder is a cache, not a layer.
# CI carries out these COPY lines and this RUN line as written, without Docker, then starts the binary
# and asks the HEALTHCHECK command (.ci/image_build.py): keep the RUN line to `cargo …` and `cp`.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto/ proto/
COPY migrations/ migrations/
COPY crates/ crates/
COPY src/ src/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --package billecta-onboarding --bin billecta-onboarding \
    && cp target/release/billecta-onboarding /usr/local/bin/billecta-onboarding

FROM debian:bookworm-slim

# The only system package is CA roots, for TLS to Billecta: SQLite is compiled into the binary.
# Unpinned on purpose: the bookworm-slim tag already fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 onboarding \
    && useradd --system --uid 10001 --gid onboarding --no-create-home \
        --home-dir /var/lib/billecta-onboarding --shell /usr/sbin/nologin onboarding \
    && mkdir -p /var/lib/billecta-onboarding \
    && chown onboarding:onboarding /var/lib/billecta-onboarding

COPY --from=builder /usr/local/bin/billecta-onboarding /usr/local/bin/billecta-onboarding

# The SQLite database lives in the one directory the service user may write to.
WORKDIR /var/lib/billecta-onboarding

# Listen on all interfaces so the published port is reachable; log JSON for log shippers.
ENV ONBOARDING_LISTEN=0.0.0.0:50051 \
    ONBOARDING_DATABASE=/var/lib/billecta-onboarding/onboarding.sqlite3 \
    ONBOARDING_LOG_FORMAT=json \
    ONBOARDING_PROBE_ADDRESS=http://127.0.0.1:50051

EXPOSE 50051

USER 10001

# Ask the gRPC health service itself; the probe exits 0 only on SERVING. With TLS, set
# ONBOARDING_PROBE_ADDRESS=https://localhost:50051 and ONBOARDING_PROBE_CA to the CA file.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/billecta-onboarding", "probe"]

ENTRYPOINT ["/usr/local/bin/billecta-onboarding"]

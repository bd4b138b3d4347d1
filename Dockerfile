# warren's container image: one binary, `warren`, whose subcommand picks the role
# (`serve`, `worker`, `saga run`, `orders`, ...). docs/deployment.md says how to run it.
#
#   docker build -t warren:local .
#   docker build -t warren:local --build-arg CARGO_FEATURES=otlp .   # with OTLP span export
#
# Two stages: the builder compiles the release binary; the runtime image holds that binary,
# CA certificates (TLS to the broker, the database or an SMTP server) and nothing else.

# ---------------------------------------------------------------------------------------------
# Builder
FROM rust:1-bookworm AS builder

# Cargo features to build with (comma-separated, e.g. `otlp`); empty: the default build.
ARG CARGO_FEATURES=""

WORKDIR /build

# Dependencies first, in their own layer: copy only the manifests and the lock file, build
# against stub sources, and keep the compiled dependencies. This layer is reused until
# Cargo.toml, entities/Cargo.toml, bench/Cargo.toml or Cargo.lock change. The benchmark crate
# (bench/, a workspace member) is not built here: its manifest and a stub binary are only what
# cargo needs to load the workspace, and the stub stays.
COPY Cargo.toml Cargo.lock ./
COPY entities/Cargo.toml entities/Cargo.toml
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir -p src entities/src bench/src \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && : > entities/src/lib.rs \
    && echo 'fn main() {}' > bench/src/main.rs \
    && cargo build --release --locked ${CARGO_FEATURES:+--features "$CARGO_FEATURES"} \
    && rm -rf src entities/src

# The real sources. broker-topology.json is compiled into the binary (include_str!).
COPY broker-topology.json ./
COPY entities/src entities/src
COPY src src
# COPY keeps the files' modification times, which may be older than the stub build above;
# touch them and drop the stubs' fingerprints so that cargo rebuilds warren and entities.
RUN find src entities/src -type f -exec touch {} + \
    && rm -rf target/release/.fingerprint/warren-* target/release/.fingerprint/entities-* \
    && cargo build --release --locked ${CARGO_FEATURES:+--features "$CARGO_FEATURES"} \
    && install -D -m 0755 target/release/warren /out/warren

# ---------------------------------------------------------------------------------------------
# Runtime
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user with a fixed uid, so that volumes and Kubernetes' runAsUser can name it.
RUN groupadd --system --gid 10001 warren \
    && useradd --system --uid 10001 --gid warren --home-dir /var/lib/warren \
        --shell /usr/sbin/nologin warren \
    && install -d -o warren -g warren -m 0750 /var/lib/warren

COPY --from=builder /out/warren /usr/local/bin/warren

# In a container the listeners must not be bound to the container's own loopback only:
# the HTTP front (`warren serve`) on 8080, and the metrics listener (GET /metrics and
# /healthz) of every other process on 9464. Override with WARREN_HTTP__ADDR and
# WARREN_METRICS__ADDR.
ENV WARREN_HTTP__ADDR=0.0.0.0:8080 \
    WARREN_METRICS__ADDR=0.0.0.0:9464

USER 10001:10001
# The working directory is writable by warren: the default database URL
# (sqlite://warren.db?mode=rwc) creates its file here when no PostgreSQL URL is given.
WORKDIR /var/lib/warren

EXPOSE 8080 9464

# warren stops gracefully on SIGTERM: consumers stop taking messages and in-flight handlers
# finish (up to jobs.shutdown_grace_ms, 30 s by default). Give the container a stop timeout
# above that (docker stop -t 40, compose stop_grace_period: 40s).
STOPSIGNAL SIGTERM

# `warren healthcheck` GETs http://127.0.0.1:8080/healthz (the HTTP front) and exits 0 on
# 200, 1 otherwise. Processes without the HTTP front serve /healthz on their metrics
# listener: run them with `warren healthcheck --url http://127.0.0.1:9464/healthz`
# (docker-compose.yml sets that per service).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["warren", "healthcheck"]

ENTRYPOINT ["warren"]
CMD ["serve"]

# syntax=docker/dockerfile:1
# Build:  docker build -t anamnesis .
# Run:    docker run -p 8080:8080 -v anamnesis-data:/data anamnesis
# On first start with no ANAMNESIS__AUTH__HS256_SECRET, the secret is generated
# in the volume and an admin token is printed once (docker logs).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /build
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches config \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/hot_paths.rs \
 && echo 'fn main() {}' > benches/merges.rs \
 && echo 'fn main() {}' > benches/reference.rs \
 && cargo build --release --locked \
 && rm -rf src benches
COPY config ./config
COPY openapi ./openapi
COPY benches ./benches
COPY src ./src
RUN touch src/main.rs src/lib.rs benches/reference.rs \
 && cargo build --release --locked --bin anamnesis \
 && strip target/release/anamnesis

FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin anamnesis \
 && mkdir -p /data && chown anamnesis /data
COPY --from=build /build/target/release/anamnesis /usr/local/bin/anamnesis
USER anamnesis
ENV ANAMNESIS__SERVER__LISTEN=0.0.0.0:8080 \
    ANAMNESIS__STORAGE__PATH=/data \
    ANAMNESIS__TELEMETRY__FORMAT=json
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/anamnesis", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/anamnesis"]
CMD ["serve"]

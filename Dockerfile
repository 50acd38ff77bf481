# flaghook: a small, non-root image, built with the `dist` profile (release + whole-program LTO).
# syntax=docker/dockerfile:1
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY link ./link
COPY src ./src
COPY config ./config
COPY examples ./examples
RUN cargo build --profile dist --locked --bin flaghook \
 && strip target/dist/flaghook

# Debian slim with git (git sync runs the git command line; distroless has none), CA
# certificates, and a non-root user 65532. The chart runs it with a read-only root filesystem:
# the store lives on /var/lib/flaghook and git caches on /var/cache/flaghook, both volumes.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /var/cache/flaghook nonroot \
 && install -d -o 65532 -g 65532 /var/lib/flaghook /var/cache/flaghook
COPY --from=build /src/target/dist/flaghook /usr/local/bin/flaghook
COPY --from=build /src/config/flaghook.toml /etc/flaghook/flaghook.toml
ENV HOME=/var/cache/flaghook
USER 65532:65532
EXPOSE 18080 18081
ENTRYPOINT ["/usr/local/bin/flaghook"]
CMD ["--config", "/etc/flaghook/flaghook.toml"]

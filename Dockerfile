# flaghook: a small, non-root image. Same build steps as CI (cargo build --release --locked).
# syntax=docker/dockerfile:1
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY examples ./examples
RUN cargo build --release --locked --bin flaghook \
 && strip target/release/flaghook

# distroless/cc: glibc and CA certificates, no shell, runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/flaghook /usr/local/bin/flaghook
COPY --from=build /src/config/flaghook.toml /etc/flaghook/flaghook.toml
USER 65532:65532
EXPOSE 18080 18081
ENTRYPOINT ["/usr/local/bin/flaghook"]
CMD ["--config", "/etc/flaghook/flaghook.toml"]

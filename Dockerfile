# The operator's image: one static binary and the CA bundle on an empty base, run as UID 65532.
#
# Users build it with Docker or Podman:   docker build -t workspace-assist .
# CI builds the same final stage from a binary it built itself (no base image is reachable there):
#   podman build --build-arg BINARY=prebuilt -t workspace-assist CONTEXT
# where CONTEXT holds `workspace-assist` (built with the `cargo build` line below) and
# `ca-certificates.crt` (tests/image.rs does exactly that).
ARG BINARY=build

# Builds the binary. Static (glibc with crt-static), so the image needs no C library; names are
# resolved by the binary's own DNS resolver, so it needs no NSS modules either. Without the
# default dev-tools feature: the operator and the simulator, no demo, benchmark or control-plane
# launcher (tests/shipped_binary.rs runs this very line and checks).
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crds ./crds
COPY deploy/examples ./deploy/examples
COPY tests ./tests
RUN RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --no-default-features --target x86_64-unknown-linux-gnu --bin workspace-assist
RUN mkdir /out && cp target/x86_64-unknown-linux-gnu/release/workspace-assist /etc/ssl/certs/ca-certificates.crt /out/

# The same two files, built outside (CI).
FROM scratch AS prebuilt
COPY workspace-assist ca-certificates.crt /out/

FROM ${BINARY} AS binary

FROM scratch
COPY --from=binary /out/workspace-assist /workspace-assist
COPY --from=binary /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/workspace-assist"]
CMD ["run"]

# A small static image that runs as non-root. Build: docker build -t workspace-assist .
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crds ./crds
COPY tests ./tests
# Without the default dev-tools feature: the operator and the simulator, no demo, benchmark or
# control-plane launcher (tests/shipped_binary.rs runs this very line and checks).
RUN cargo build --release --locked --no-default-features --bin workspace-assist

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/release/workspace-assist /workspace-assist
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/workspace-assist"]
CMD ["run"]

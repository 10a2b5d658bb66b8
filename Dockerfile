# A small static image that runs as non-root. Build: docker build -t workspace-assist .
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crds ./crds
COPY tests ./tests
RUN cargo build --release --locked --bin workspace-assist

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/release/workspace-assist /workspace-assist
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/workspace-assist"]
CMD ["run"]

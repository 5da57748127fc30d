# The operator image: `docker build -t disaggregatedset-operator:0.1.0 .`
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# No `dev` feature: the image links no in-memory cluster (kube-sim).
RUN cargo build --release --locked -p disagg --no-default-features && cp target/release/disagg /disagg

# Distroless, non-root (uid 65532), nothing but the binary and its C runtime.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /disagg /usr/local/bin/disagg
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/disagg"]
CMD ["run"]

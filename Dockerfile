# The postbox binary: relay, migrations and operator commands.
#
#   docker build -t postbox .
#   docker run --rm -e POSTBOX_DATABASE_URL=postgres://... postbox migrate up
#   docker run -e POSTBOX_DATABASE_URL=postgres://... -p 9090:9090 postbox relay --http 0.0.0.0:9090
#
# The relay exits 0 within 10 seconds of SIGTERM (docker stop's default
# grace period is 10s).

FROM golang:1.26 AS build
WORKDIR /src
# Dependencies first, so they stay cached while the sources change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/postbox ./cmd/postbox

# Static binary, no shell, non-root user (uid 65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/postbox /postbox
USER nonroot:nonroot
ENTRYPOINT ["/postbox"]
CMD ["relay"]

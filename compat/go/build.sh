#!/usr/bin/env bash
# The Go clients of the compatibility suite (franz-go and Sarama, pinned in go.mod and
# go.sum, fetched through Go's module proxy): builds target/compat-go, which
# server/tests/go_clients.rs runs against our broker. .ci/run calls this first.
set -euo pipefail
cd "$(dirname "$0")"
go build -mod=readonly -o target/compat-go .
echo "compat/go: target/compat-go built"

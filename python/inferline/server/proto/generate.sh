#!/usr/bin/env bash
# Regenerates inference_pb2.py / .pyi from inference.proto (needs grpcio-tools).
# Handlers are registered generically (grpc_frontend.py), so no *_pb2_grpc.py stubs.
# The generated file checks the protobuf runtime: keep pyproject's protobuf pin >= the
# "Protobuf Python Version" written at the top of inference_pb2.py.
set -euo pipefail
cd "$(dirname "$0")/../../.."   # python/: the descriptor is named inferline/server/proto/inference.proto
python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. inferline/server/proto/inference.proto

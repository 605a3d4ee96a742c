"""Generated KServe v2 / Triton messages (see inference.proto, generate.sh)."""

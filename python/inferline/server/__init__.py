"""The inference server: KServe v2 over gRPC and REST, over the engine and the registry."""

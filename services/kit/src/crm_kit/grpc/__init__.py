"""gRPC server bootstrap on grpc.aio: health, reflection, interceptors and graceful shutdown."""

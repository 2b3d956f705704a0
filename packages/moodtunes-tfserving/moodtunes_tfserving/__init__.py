"""TensorFlow Serving's gRPC API through protobuf alone: `proto` (generated from
proto/tfserving/tfserving.binpb), `tensors` (ndarray <-> TensorProto), `client` (Predict)."""

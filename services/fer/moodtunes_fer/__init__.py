"""FER worker runtime: decoding, face detection, the TF Serving gRPC client and the PCA + classifier
head. Training lives apart, in training/fer (moodtunes_fer_training)."""

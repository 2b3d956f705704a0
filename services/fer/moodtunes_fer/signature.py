"""The served CNN's contract: what goes into its `serving_default` signature and what comes out.

Training builds and exports the model to this contract; the worker calls it over gRPC. Both import
it from here, so they cannot drift apart.
"""

from moodtunes.emotions import EMOTIONS

CLASS_NAMES = EMOTIONS
INPUT_SIZE = 48  # FER2013's native size: upscaling to the paper's 64 adds 1.8x compute, no information
INPUT_CHANNELS = 1  # FER2013 is greyscale; the paper's RGB copies would carry the same value thrice
FC1_UNITS = 1024  # width of the feature tap the head consumes

SIGNATURE = "serving_default"
INPUT_KEY = "image"  # float32 (N, 48, 48, 1), pixels 0..255
FEATURES_KEY = "features"  # float32 (N, FC1_UNITS)
PROBABILITIES_KEY = "probabilities"  # float32 (N, len(CLASS_NAMES)), the CNN's own softmax

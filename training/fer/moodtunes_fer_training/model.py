"""The VGG16-layout CNN of the published system, adapted to FER2013's 48x48 greyscale faces.

Layout kept from the paper: 13 3x3 'same' conv layers in blocks of 2-2-3-3-3 with 2x2 max-pooling
after each block, filters 32-64-128-256-256, Flatten -> Dense 1024 -> ReLU -> Dense 512 -> ReLU ->
Dropout -> softmax. Our change: batch normalisation after every conv (faster, steadier training).
Dense layers and their activations are separate layers so every feature tap the paper's first
experiment compares (flatten, fc-1, fc-1 activated, fc-2, fc-2 activated) has a name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

from moodtunes_fer.signature import CLASS_NAMES, FC1_UNITS, INPUT_CHANNELS, INPUT_SIZE

__all__ = [
    "CLASS_NAMES",
    "FC1_UNITS",
    "INPUT_CHANNELS",
    "INPUT_SIZE",
    "BLOCKS",
    "build_vgg16",
    "feature_extractor",
]

BLOCKS = ((32, 2), (64, 2), (128, 3), (256, 3), (256, 3))
FC2_UNITS = 512
DROPOUT = 0.25

# Names of the feature taps; "fc1_relu" is what the deployed head consumes.
FEATURE_LAYERS = ("flatten", "fc1", "fc1_relu", "fc2", "fc2_relu")
SERVING_FEATURE_LAYER = "fc1_relu"


def build_vgg16(
    input_size: int = INPUT_SIZE,
    num_classes: int = len(CLASS_NAMES),
    batch_norm: bool = True,
    weight_decay: float = 0.0,
    width: float = 1.0,
) -> keras.Model:
    """Input: float32 pixels in [0, 255], shape (N, size, size, 1). Output: class probabilities.
    `width` scales every block's filters (2.0: VGG16's own 64-128-256-512-512)."""
    import keras
    from keras import layers

    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input((input_size, input_size, INPUT_CHANNELS), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for block, (filters, n_convs) in enumerate(BLOCKS, start=1):
        for conv in range(1, n_convs + 1):
            name = f"block{block}_conv{conv}"
            x = layers.Conv2D(
                round(filters * width),
                3,
                padding="same",
                use_bias=not batch_norm,
                kernel_regularizer=reg,
                name=name,
            )(x)
            if batch_norm:
                x = layers.BatchNormalization(name=f"{name}_bn")(x)
            x = layers.ReLU(name=f"{name}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(FC1_UNITS, kernel_regularizer=reg, name="fc1")(x)
    x = layers.ReLU(name="fc1_relu")(x)
    x = layers.Dense(FC2_UNITS, kernel_regularizer=reg, name="fc2")(x)
    x = layers.ReLU(name="fc2_relu")(x)
    x = layers.Dropout(DROPOUT, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="fer_vgg16")


def feature_extractor(model: keras.Model, layer_names=(SERVING_FEATURE_LAYER,)) -> keras.Model:
    """A model sharing `model`'s weights that returns the named feature taps plus the probabilities."""
    import keras

    outputs = {name: model.get_layer(name).output for name in layer_names}
    outputs["probabilities"] = model.output
    return keras.Model(model.input, outputs, name="fer_vgg16_features")

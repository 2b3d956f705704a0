"""The emotions moodtunes recognises, in the order of every probability vector (model output,
events, modes table, API). The published system's order: 0 neutral, 1 happy, 2 sad, 3 fear, 4 angry."""

EMOTIONS = ("neutral", "happy", "sad", "fear", "angry")

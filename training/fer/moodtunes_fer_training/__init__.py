"""Training, export, evaluation and experiments of the FER model; apart from the runtime worker."""

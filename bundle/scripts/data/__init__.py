"""The data layer: dataset presets, volumes in slice space and back, phantoms, training episodes,
latent-space augmentation. Import the submodules (`scripts.data.volumes`, ...); this package file
imports nothing, so the phantom generator stays usable without loading MONAI."""

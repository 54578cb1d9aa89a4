"""absl-flag binaries behind the tflm-* console scripts."""

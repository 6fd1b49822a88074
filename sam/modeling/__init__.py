"""SAM's modules with Meta's names: image encoders, prompt encoder, mask decoder."""

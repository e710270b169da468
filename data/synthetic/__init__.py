"""The built-in synthetic dataset: rendered clips with compositional captions, generated once."""

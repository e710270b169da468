"""Dataset readers: one file per benchmark on ``base.VideoTextDataset``, annotation parsing, batching."""

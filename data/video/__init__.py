"""Video decoding, frame-index rules, keyframe selection, exact seeking, CLIP preprocessing."""

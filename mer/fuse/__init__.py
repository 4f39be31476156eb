"""Stage 2: fusion models trained and evaluated from the feature cache alone (no audio decoding,
no pretrained encoders). models/ holds one file per model, blocks.py the blocks they share."""

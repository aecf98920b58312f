"""Parameter edits (full / LoRA / scale-gated), their file format and the edited model."""

"""The model stage: the base model as a transformers folder every training stage starts from."""

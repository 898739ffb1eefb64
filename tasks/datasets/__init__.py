"""The datasets stage: held-out split, cleaning, packed CPT rows and LlamaFactory sets."""

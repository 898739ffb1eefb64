"""The cpt stages: continual pre-training with DeepSpeed and zigzag ring attention, one
stage per curriculum phase."""

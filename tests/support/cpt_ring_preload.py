"""Imported first by every trainer rank in the sequence-parallel test (RunSpec.preload):
ring_flash_attn imported over the pure-torch stand-in for flash-attn's kernels, so the
trainer's own import of it finds the module ready and flash_attn stays invisible."""

from tasks.cpt.ring_attention import import_ring_flash_attn
from tests.support.flash_attn_standin import flash_attn_standin

with flash_attn_standin():
    import_ring_flash_attn()

"""Building blocks shared by several model families (CARAFE, channel attention, perceptual loss,
cross-attention encoder, the run's frozen CLIP text encoder). Each block is built from plain
arguments and reads no files, except `clip_text`, which loads the run's CLIP through `weights`."""

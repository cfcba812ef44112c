"""Building blocks shared by several model families (CARAFE, channel attention, perceptual loss,
cross-attention encoder). Each block is built from plain arguments and reads no files."""

"""The main job: pooling vs strided conv vs larger kernel vs dilation at equal receptive field."""

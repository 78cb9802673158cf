"""Pure numerics: numpy / torch / tensorly, no Prefect, no xarray, no files.

Modules (import the one you need; torch loads only with the torch models):

- ``tensor_ops``: unfold / fold / mode-n product, soft thresholding, SVT, t-product, t-SVD, TNN prox
- ``patching``: patch origins, extract / fold patches, spatial-block split
- ``statistics``: unfolding energy and autocorrelation (the realism benchmark)
- ``tdl`` / ``entropy``: Tensor Decomposition Learning (learned mode bases) and the rANS coding of
  its quantized cores
- ``qtrpca``: quantized tensor robust PCA and its baselines (TRPCA, matrix RPCA, robust z-score)
- ``completion``: Tucker completion, HaLRTC, linear temporal interpolation
- ``lrtcnet`` / ``lrtcnet_training``: LRTC-Net (deep-unfolded Tucker completion) and its fitting
- ``unet_lrtd`` / ``unet_lrtd_training``: the UNet with its low-rank Tucker (LRTD) layer, for labels
- ``conv4d``, ``classifiers`` / ``classifier_training``: the 4D convolution, the 4D-CNN and its 3D /
  2D-CNN rivals, and their training
- ``device``: ``cuda`` when torch sees a GPU, else the CPU
"""

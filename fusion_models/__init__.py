"""Pure numerics: numpy / torch / tensorly, no Prefect, no xarray, no files.

Modules (import the one you need; torch loads only with the torch models):

- ``tensor_ops``: unfold / fold / mode-n product, soft thresholding, SVT, t-product, t-SVD, TNN prox
- ``patching``: patch origins, extract / fold patches, spatial-block split
- ``statistics``: unfolding energy and autocorrelation (the realism benchmark)
- ``qtrpca``: quantized tensor robust PCA and its baselines (TRPCA, matrix RPCA, robust z-score)
- ``completion``: Tucker completion, HaLRTC, linear temporal interpolation
- ``lrtcnet`` / ``lrtcnet_training``: LRTC-Net (deep-unfolded Tucker completion) and its fitting
"""

"""Training pipeline for style encoders and style spaces (issue 4).

One concept per module: `config` (themes, split, sizes), `dataset` (icon-theme builder),
`supcon` (loss), `encoder` (the core's `stylenet` backbone: model kwargs, augmentations,
embedding), `fit` (training loop),
`evaluate` (kNN / probes / baseline), `pca` (style space), `atlas` (component pictures),
`commands` (their command-line arguments, for `style-components dataset|train|evaluate|pca|atlas`).
Nothing here is imported by the extension at run time.
"""

"""Vision: the one image decoder, the ImageNet predictors, class names mapped onto norm words, and
the encoder that turns images into what every retrieval method reads."""

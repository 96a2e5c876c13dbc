"""Reference models and offline data for LayerCollapse experiments (not part of ``lconnx``).

* ``models.data``: real data sets from installed packages (MNIST, Fashion-MNIST, digits, VADER)
  and the location of the pretrained all-MiniLM-L6-v2 files;
* ``models.architectures``: VGG-style CNN, MLP-Mixer and ViT for 28x28 grayscale images;
* ``models.minilm``: a BERT encoder that loads all-MiniLM-L6-v2, plus a classification head;
* ``models.recipe``: the shared AdamW training loop (``train``) and ``evaluate``;
* ``models/synthetic.py``, ``models/demo.py``: scripts, run as files.

Import from the repository root (``from models.data import load_fashion_mnist``); nothing
here is imported eagerly, so ``import models`` needs neither torch nor the data packages.
"""

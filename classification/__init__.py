"""The paper's image-classification table: ResNet-110 on CIFAR-10, ResNeXt-50 on ImageNet.

``python -m classification.train`` trains one row (see ``configs/cifar10.yaml``);
``bash scripts/cifar10.sh`` runs the whole table.
"""

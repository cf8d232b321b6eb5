"""Data: Fashion-MNIST (proxy classification), FMNIST-Det (proxy detection), ImageNet (paper preset)."""

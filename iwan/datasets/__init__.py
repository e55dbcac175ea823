"""Data sets and downloads: CIFAR and image folders as arrays, the USF norms' files, fetching."""

"""Clustering utilities: DeepCluster's PCA-whitening + k-means pseudo-labels."""

from relssl.cluster.kmeans import (
    fill_empty_clusters,
    kmeans_assign,
    pca_whiten,
    pca_whiten_l2,
    uniform_cluster_sampler_weights,
)

__all__ = ["fill_empty_clusters", "kmeans_assign", "pca_whiten", "pca_whiten_l2", "uniform_cluster_sampler_weights"]

"""Clustering: DeepCluster's PCA-whitening + k-means pseudo-labels, and RCL's hierarchical
clustering (the online `OnlineHierarchy` and the offline DBSCAN / k-means label banks)."""

from relssl.cluster.hierarchy import OnlineHierarchy, UpdateStats
from relssl.cluster.kmeans import (
    fill_empty_clusters,
    kmeans_assign,
    pca_whiten,
    pca_whiten_l2,
    uniform_cluster_sampler_weights,
)
from relssl.cluster.offline import dbscan_levels, enforce_hierarchy, kmeans_levels

__all__ = [
    "OnlineHierarchy",
    "UpdateStats",
    "dbscan_levels",
    "enforce_hierarchy",
    "fill_empty_clusters",
    "kmeans_assign",
    "kmeans_levels",
    "pca_whiten",
    "pca_whiten_l2",
    "uniform_cluster_sampler_weights",
]

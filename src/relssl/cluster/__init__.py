"""Clustering: DeepCluster's PCA-whitening + k-means pseudo-labels, and RCL's hierarchical
clustering (the online `OnlineHierarchy`, the offline DBSCAN / k-means label banks, and the data-adaptive
DBSCAN radii)."""

from relssl.cluster.hierarchy import OnlineHierarchy, UpdateStats
from relssl.cluster.kmeans import (
    fill_empty_clusters,
    kmeans_assign,
    pca_whiten,
    pca_whiten_l2,
    uniform_cluster_sampler_weights,
)
from relssl.cluster.offline import dbscan_levels, enforce_hierarchy, kmeans_levels
from relssl.cluster.radii import adaptive_radii, kth_neighbour_distances

__all__ = [
    "OnlineHierarchy",
    "UpdateStats",
    "adaptive_radii",
    "dbscan_levels",
    "enforce_hierarchy",
    "fill_empty_clusters",
    "kmeans_assign",
    "kmeans_levels",
    "kth_neighbour_distances",
    "pca_whiten",
    "pca_whiten_l2",
    "uniform_cluster_sampler_weights",
]
